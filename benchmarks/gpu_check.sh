#!/usr/bin/env bash
# Every GPU figure this project reports, in one run of under 8 minutes on an H100/H200:
#   1. bench_fuse.py's CUDA rows: DAE-Fuse ms per 1024x768 pair, fp32 and bf16 (issue 3: <= 70 ms bf16);
#   2. bench_video.py's CUDA rows: DAE-Fuse frames/s at 640x512 and 1024x768, fp32 / bf16 / bf16 channels-last,
#      with read / fuse / write split (issue 15: >= 100 frames/s at 1024x768 in bf16);
#   3. bench_video.py speed: real clips end to end, the release, stabilised and max (issue 23).
#
#     bash benchmarks/gpu_check.sh            # logs to $OUT (the device machine's) or runs/gpu_check/
#
# The GPU machine's image has torch, timm, opencv-python-headless, numpy, pyyaml and tqdm but no ultralytics,
# albumentations or pycocotools: only fusion.* and data.* are imported here, and step 0 checks that none of those
# three is pulled in. The repository is used in place (PYTHONPATH), nothing is installed. DAE-Fuse is the released
# checkpoint when fusion/weights/ holds one (the cost depends only on the architecture), else an untrained
# dae_fuse_s, as the tables say.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG_DIR=${OUT:-runs/gpu_check}
mkdir -p "$LOG_DIR"
CKPT=()
[[ -f fusion/weights/dae_fuse_release.pt ]] && CKPT=(--checkpoint fusion/weights/dae_fuse_release.pt)

nvidia-smi -L || true
echo "== 0. imports (no ultralytics / albumentations / pycocotools on the fusing path)"
"$PY" - <<'EOF'
import sys
import fusion.fusers.fuse, fusion.fusers.base, fusion.video.temporal, fusion.video.streaming  # noqa: F401
import fusion.video.__main__  # noqa: F401  (python -m fusion.video, the video command)
fusion.fusers.base.fuser_names()
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"ultralytics", "albumentations", "pycocotools"})
assert not heavy, f"the fusing path imports {heavy}"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF

echo "== 1. bench_fuse.py (one pair, 1024x768)"
timeout 150 "$PY" benchmarks/bench_fuse.py "${CKPT[@]}" --threads 1 --repeats 2 2>&1 | tee "$LOG_DIR/bench_fuse.log"

echo "== 2. bench_video.py, CUDA rows"
timeout 240 "$PY" benchmarks/bench_video.py "${CKPT[@]}" --devices cuda --fusers dae_fuse --frames 96 \
    --cuda-batch-size 16 2>&1 | tee "$LOG_DIR/bench_video.log"
echo "== 2b. the same, read and write overlapped with fusing (end-to-end throughput)"
timeout 120 "$PY" benchmarks/bench_video.py "${CKPT[@]}" --devices cuda --fusers dae_fuse --frames 96 \
    --sizes 1024x768 --cuda-batch-size 16 --overlap 2>&1 | tee "$LOG_DIR/bench_video_overlap.log"
echo "== 3. bench_video.py speed: real footage end to end (mp4v decode, fuse, mp4v encode), CUDA, batch 16"
echo "   0117_1605 (640x480) and the M3FD sample (1024x768); skipped, saying so, where ../shared/data is absent"
timeout 150 "$PY" benchmarks/bench_video.py speed "${CKPT[@]}" --device cuda --frames 120 --rounds 1 \
    --json "$LOG_DIR/video_speed_cuda.json" 2>&1 | tee "$LOG_DIR/bench_video_speed.log"
echo "gpu_check: done"
