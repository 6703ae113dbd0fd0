"""Temporal fine-tuning of a trained DAE-Fuse on consecutive video frames: the fused video should not flicker.

The released DAE-Fuse fuses each frame alone; on real video its output changes where neither source does (issue
23: flicker 0.23-0.29 grey levels per frame where ``max`` has 0). This fine-tunes it on pairs of consecutive frames
``(t, t+1)`` of one training clip with, per pair,

* the usual phase-2 fusion losses (``fusion.training.losses.FusionLoss``: max intensity, max gradient; the release's
  weights) on both frames;
* a temporal term (after Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018): ``L1(F_{t+1}, warp(F_t))``
  where ``warp`` follows the SOURCES' optical flow ``t+1 -> t`` (``fusion.video.flow``, DIS; the mean of the infrared
  and visible flows), over the pixels where that flow is trustworthy: both sources' forward-backward checks pass
  (``fusion.video.flow.consistent``, VF-Bench's 1 px), the two sources' flows agree within ``flow_agree_px``, and each
  source itself is reproduced by the warp within ``source_residual`` (so a real change of a source, e.g. smoke or a
  light switching on, is never penalised in the fused video);
* an anchor ``L1(F, F_release)`` to the starting model's own output on the same crop (a frozen copy: the
  transformer branch attends over the whole input, so a crop fuses ~5 grey levels away from the same pixels of the
  full frame, and a full-frame target would teach the crop's context away), so that the fused images keep the
  release's look (and its still-image quality, VIF/Qabf) while the flicker is trained out.

No adversarial term: the released checkpoint holds the generator only (no discriminators to continue with).
BatchNorm statistics are frozen (the model trains in eval mode) so that one clip's crops do not shift them.

Everything that does not change during training is computed once before the first step (``prepare_pairs``):
source luma frames, flows and masks, at full resolution; steps take random crops.

``python -m fusion.training.temporal_train --config fusion/configs/temporal_finetune.yaml --out runs/temporal`` trains,
checkpointing every ``checkpoint_every`` steps to ``OUT/last.pt`` (and resumes from it), then writes
``OUT/final.pt`` in the release format (generator only, bfloat16) with the fine-tuning record.
"""
from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data.config import from_dict, merge, parse_override, read_yaml
from data.io import atomic_write_json, gray_reference, visible_from_bgr
from data.provenance import package_versions

from fusion.models.checkpoint import RELEASE_FORMAT, build_generator, read_generator_checkpoint, save_checkpoint
from fusion.video.flow import consistent, resolve_flow

from .losses import FusionLoss


@dataclass(frozen=True)
class TemporalTrainConfig:
    """A temporal fine-tuning run; every number's source is in ``fusion/configs/temporal_finetune.yaml``."""

    init: str = "fusion/weights/dae_fuse_release.pt"
    ir_video: str = "../shared/data/video/m3svd/0113_1714_infrared.mp4"
    vis_video: str = "../shared/data/video/m3svd/0113_1714_visible.mp4"
    frame_stride: int = 4
    max_pairs: int = 120
    flow: str = "dis"
    flow_agree_px: float = 1.0
    source_residual: float = 12.0
    crop: int = 192
    batch_pairs: int = 2
    steps: int = 1500
    lr: float = 5.0e-5
    grad_clip: float = 0.01
    fuse_intensity: float = 1.0
    fuse_grad: float = 10.0
    temporal_weight: float = 20.0
    anchor_weight: float = 2.0
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        positive = ("frame_stride", "max_pairs", "crop", "batch_pairs", "steps", "lr", "grad_clip", "threads",
                    "checkpoint_every", "flow_agree_px", "source_residual")
        weights = ("fuse_intensity", "fuse_grad", "temporal_weight", "anchor_weight")
        problems = [f"{name} must be positive, got {getattr(self, name)}" for name in positive
                    if not getattr(self, name) > 0]
        problems += [f"{name} must be >= 0, got {getattr(self, name)}" for name in weights
                     if not getattr(self, name) >= 0]
        if self.crop % 16:
            problems.append(f"crop must be a multiple of 16 (DAE-Fuse's size multiple), got {self.crop}")
        if problems:
            raise ValueError("invalid temporal training config: " + "; ".join(problems))

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> TemporalTrainConfig:
        """The config file with ``key=value`` overrides, through the project's one config mechanism
        (``data.config``: unknown keys and wrong types are a ``ConfigError`` naming them)."""
        values = read_yaml(Path(path))
        for item in overrides:
            values = merge(values, parse_override(item))
        return from_dict(cls, values, str(path))


def read_luma_frames(path: str | Path, kind: str) -> list[np.ndarray]:
    """Every frame of a video as the fuser's input luma (float32 (H, W), 0..255): the infrared frame as its
    rounded luma, the visible one as ``visible_from_bgr``'s (what ``fusion.video.streaming`` feeds a fuser)."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(gray_reference(bgr).astype(np.float32) if kind == "ir" else visible_from_bgr(bgr)[0])
    capture.release()
    if len(frames) < 2:
        raise ValueError(f"{path}: {len(frames)} frames decoded, need at least 2")
    return frames


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """``image(x + flow(x))`` by bilinear sampling (border replicated): image (B, C, H, W), flow (B, 2, H, W) px."""
    _, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) / max(w - 1, 1) * 2 - 1
    gy = (ys + flow[:, 1]) / max(h - 1, 1) * 2 - 1
    return F.grid_sample(image, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border",
                         align_corners=True)


@dataclass
class FramePairs:
    """Full-resolution training data: (N, 1, H, W) tensors in [0, 1] for the sources at t and t+1, the flow
    t+1 -> t (N, 2, H, W) in px and the temporal mask (N, 1, H, W) in {0, 1}."""

    ir: Tensor
    vis: Tensor
    ir_next: Tensor
    vis_next: Tensor
    flow: Tensor
    mask: Tensor
    kept: float


@torch.inference_mode()
def prepare_pairs(cfg: TemporalTrainConfig) -> FramePairs:
    """Decode the clip, pick pairs (t, t+1) every ``frame_stride`` frames (at most ``max_pairs``), compute the
    sources' flows and the temporal mask."""
    ir_frames, vis_frames = read_luma_frames(cfg.ir_video, "ir"), read_luma_frames(cfg.vis_video, "vis")
    count = min(len(ir_frames), len(vis_frames))
    starts = list(range(0, count - 1, cfg.frame_stride))[: cfg.max_pairs]
    estimator = resolve_flow(cfg.flow)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("ir", "vis", "ir_next", "vis_next", "flow", "mask")}
    for t in starts:
        flows, checks, residual_ok = [], [], []
        for src in (ir_frames, vis_frames):
            now, before = (np.clip(np.round(src[i]), 0, 255).astype(np.uint8) for i in (t + 1, t))
            back, fwd = estimator(now, before), estimator(before, now)  # now(x) ~ before(x + back(x))
            flows.append(back)
            checks.append(consistent(back, fwd))
            warped = warp(torch.from_numpy(before).float()[None, None],
                          torch.from_numpy(back).permute(2, 0, 1)[None])[0, 0].numpy()
            residual_ok.append(np.abs(now.astype(np.float32) - warped) < cfg.source_residual)
        agree = np.linalg.norm(flows[0] - flows[1], axis=2) < cfg.flow_agree_px
        rows["mask"].append((checks[0] & checks[1] & agree & residual_ok[0] & residual_ok[1]).astype(np.float32))
        rows["flow"].append(((flows[0] + flows[1]) / 2).transpose(2, 0, 1))
        for key, src, i in (("ir", ir_frames, t), ("vis", vis_frames, t), ("ir_next", ir_frames, t + 1),
                            ("vis_next", vis_frames, t + 1)):
            rows[key].append(src[i] / 255.0)
    tensors = {k: torch.from_numpy(np.stack(v)).float() for k, v in rows.items()}
    for key in ("ir", "vis", "ir_next", "vis_next", "mask"):
        tensors[key] = tensors[key][:, None]
    return FramePairs(**tensors, kept=float(tensors["mask"].mean()))


def crop_batch(data: FramePairs, size: int, batch: int, rng: random.Random) -> dict[str, Tensor]:
    """``batch`` random pairs, each cropped at a random place to ``size`` x ``size``."""
    _, _, h, w = data.ir.shape
    out: dict[str, list[Tensor]] = {}
    for _ in range(batch):
        i, y, x = rng.randrange(data.ir.shape[0]), rng.randrange(h - size + 1), rng.randrange(w - size + 1)
        for key in ("ir", "vis", "ir_next", "vis_next", "flow", "mask"):
            out.setdefault(key, []).append(getattr(data, key)[i, :, y:y + size, x:x + size])
    return {k: torch.stack(v) for k, v in out.items()}


def temporal_loss(fused: Tensor, fused_next: Tensor, flow: Tensor, mask: Tensor) -> Tensor:
    """Masked mean ``|F_{t+1}(x) - F_t(x + flow(x))|``; a sample whose flow leaves the crop is masked there."""
    _, _, h, w = fused.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij")
    inside = ((xs + flow[:, 0] >= 0) & (xs + flow[:, 0] <= w - 1) & (ys + flow[:, 1] >= 0)
              & (ys + flow[:, 1] <= h - 1))[:, None].float()
    keep = mask * inside
    return (torch.abs(fused_next - warp(fused, flow)) * keep).sum() / keep.sum().clamp_min(1.0)


def step_losses(model: torch.nn.Module, teacher: torch.nn.Module, fusion_loss: FusionLoss,
                cfg: TemporalTrainConfig, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every loss term of one batch of pairs (both frames of each pair go through the model in one forward)."""
    n = batch["ir"].shape[0]
    ir, vis = torch.cat([batch["ir"], batch["ir_next"]]), torch.cat([batch["vis"], batch["vis_next"]])
    fused_both = model(ir, vis)
    with torch.no_grad():
        anchor = teacher(ir, vis)
    fused, fused_next = fused_both[:n], fused_both[n:]
    content = fusion_loss(ir, vis, fused_both)
    terms = {"intensity": content["intensity"], "grad": content["grad"],
             "temporal": cfg.temporal_weight * temporal_loss(fused, fused_next, batch["flow"], batch["mask"]),
             "anchor": cfg.anchor_weight * F.l1_loss(fused_both, anchor)}
    terms["total"] = sum(terms.values())
    return terms


def train(cfg: TemporalTrainConfig, out: Path, log=print) -> Path:
    """Fine-tune (resuming from ``out/last.pt`` when present); returns the path of the released-format result."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    _, init_state = read_generator_checkpoint(cfg.init)
    model = build_generator(init_state, Path(cfg.init)).float().eval()
    teacher = copy.deepcopy(model).requires_grad_(False)
    t0 = time.perf_counter()
    data = prepare_pairs(cfg)
    log(f"prepared {data.ir.shape[0]} pairs {tuple(data.ir.shape[-2:])} in {time.perf_counter() - t0:.0f} s, "
        f"temporal mask keeps {data.kept:.1%}")
    # Eval mode throughout: BatchNorm keeps the release's statistics (drop_path is 0 in the release).
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    fusion_loss = FusionLoss(cfg.fuse_intensity, cfg.fuse_grad)
    history: list[dict[str, float]] = []
    step = 0
    last = out / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        if state["cfg"] != asdict(cfg):
            raise ValueError(f"{last} was written by another config; remove it or use another --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, rng = state["step"], state["history"], state["rng"]
        torch.set_rng_state(state["torch_rng"])
        log(f"resumed at step {step}")
    t0 = time.perf_counter()
    while step < cfg.steps:
        batch = crop_batch(data, cfg.crop, cfg.batch_pairs, rng)
        terms = step_losses(model, teacher, fusion_loss, cfg, batch)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        history.append({"step": step, **{k: float(v.detach()) for k, v in terms.items()}})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            recent = history[-cfg.checkpoint_every:]
            means = {k: float(np.mean([h[k] for h in recent])) for k in terms}
            log(f"step {step}/{cfg.steps} {(time.perf_counter() - t0) / max(len(recent), 1):.2f} s/step "
                + " ".join(f"{k} {v:.5f}" for k, v in means.items()))
            t0 = time.perf_counter()
            save_checkpoint(last, {"cfg": asdict(cfg), "model": model.state_dict(),
                                   "optimizer": optimizer.state_dict(), "step": step, "history": history,
                                   "rng": rng, "torch_rng": torch.get_rng_state()})
    return write_release(model, init_state, cfg, history, data.kept, out / "final.pt")


def release_last(cfg: TemporalTrainConfig, out: Path) -> Path:
    """``out/final.pt`` from ``out/last.pt`` as it stands (the record says how many steps it had)."""
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    if state["cfg"] != asdict(cfg):
        raise ValueError(f"{out / 'last.pt'} was written by another config")
    _, init_state = read_generator_checkpoint(cfg.init)
    model = build_generator(init_state, Path(cfg.init))
    model.load_state_dict(state["model"])
    history = state["history"]
    return write_release(model, init_state, cfg, history, float("nan"), out / "final.pt")


def write_release(model: torch.nn.Module, init_state: dict[str, Any], cfg: TemporalTrainConfig,
                  history: list[dict[str, float]], kept: float, path: Path) -> Path:
    """The fine-tuned generator in the release format (bfloat16 weights, as ``fusion.models.checkpoint.release_state``),
    with the starting checkpoint's record and this fine-tuning's (config, steps, last losses, versions)."""
    weights = {k: (v.detach().to(torch.bfloat16) if v.is_floating_point() else v)
               for k, v in model.state_dict().items()}
    state = {k: copy.deepcopy(v) for k, v in init_state.items() if k != "model"}
    state.update(format=RELEASE_FORMAT, model=weights, model_name="dae_fuse_temporal",
                 temporal_finetune={"cfg": asdict(cfg), "steps": len(history), "mask_kept": kept,
                                    "last_losses": history[-1] if history else {},
                                    "versions": package_versions()})
    save_checkpoint(path, state)
    _, check = read_generator_checkpoint(path)  # what was written loads as a fuser's checkpoint would
    build_generator(check, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion.training.temporal_train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="fusion/configs/temporal_finetune.yaml")
    parser.add_argument("--out", type=Path, required=True, help="run folder (last.pt, final.pt, history.json)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    parser.add_argument("--release-now", action="store_true",
                        help="stop here: write OUT/final.pt from OUT/last.pt (a run cut short by the time budget)")
    args = parser.parse_args(argv)
    try:
        cfg = TemporalTrainConfig.from_yaml(args.config, args.overrides)
    except (ValueError, OSError) as err:  # ConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    missing = [p for p in (cfg.init, cfg.ir_video, cfg.vis_video) if not Path(p).is_file()]
    if missing:
        print("error: missing " + ", ".join(missing), file=sys.stderr)
        return 2
    if args.release_now:
        final = release_last(cfg, args.out)
    else:
        final = train(cfg, args.out, log=lambda m: print(m, flush=True))
    atomic_write_json(args.out / "config.json", asdict(cfg))
    print(f"wrote {final} ({final.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
