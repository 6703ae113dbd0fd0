"""The paper's ablations as configuration: every switch builds, runs and trains without dead weights, round-trips
through a checkpoint, and ``python -m fusion.training.ablate`` trains and scores variants side by side."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from data.io import read_ir, read_visible
from data.m3fd import load_m3fd
from fusion.models.checkpoint import load_checkpoint
from fusion.training.ablate import VARIANTS, main, mean_std, variant_config
from fusion.models.dae_fuse import (
    ENCODERS,
    FUSIONS,
    SKIP_FUSIONS,
    DAEFuseConfig,
    count_parameters,
    create_model,
)
from fusion.fusers.fuse import load_fuser_checkpoint
from fusion.metrics.image import metric_names
from fusion.training.train import PHASES, Losses, train
from tests.conftest import assert_phase_gradients, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (model.args, parameter-name prefixes the variant must not have)
SWITCHES = {
    "cnn": ({"encoder": "cnn"}, ("encoder.vit.",)),
    "transformer": ({"encoder": "transformer"}, ("encoder.cnn.",)),
    "concat": ({"fusion": "concat"}, ("fusion.ir_from_vis.", "fusion.vis_from_ir.")),
    "average": ({"fusion": "average"}, ("fusion.",)),
    "skip_average": ({"skip_fusion": "average"}, ("skip_fusion.",)),
    "skip_max": ({"skip_fusion": "max"}, ("skip_fusion.",)),
}


def _rand_pair(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


def test_registries_list_the_switch_values():
    assert ENCODERS.names() == ["dual", "cnn", "transformer"]
    assert FUSIONS.names() == ["cross_attention", "concat", "average"]
    assert SKIP_FUSIONS.names() == ["gated", "average", "max"]
    with pytest.raises(ValueError, match="encoder must be one of dual, cnn, transformer, got 'vit'"):
        DAEFuseConfig(encoder="vit")


def test_the_default_is_todays_architecture_and_old_configs_load():
    """A checkpoint's model_config from before the switches existed builds the full model, with the same
    parameters (names and count) as before them."""
    old = {k: v for k, v in DAEFuseConfig().to_dict().items() if k not in ("encoder", "fusion", "skip_fusion")}
    assert DAEFuseConfig.from_dict(old) == DAEFuseConfig()
    model = create_model("dae_fuse_t")
    assert (len(model.state_dict()), count_parameters(model)) == (155, 66503)
    assert len(create_model("dae_fuse_s").state_dict()) == 215


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_fuses_at_any_size_without_dead_weights(switch):
    args, absent = SWITCHES[switch]
    model = create_model("dae_fuse_t", **args).eval()
    ir, vis = _rand_pair(2, 37, 53)
    with torch.no_grad():
        outputs = (model(ir, vis), *model.reconstruct(ir, vis))
    assert all(o.shape == (2, 1, 37, 53) and 0 <= o.min() and o.max() <= 1 for o in outputs)
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if n.startswith(absent)]
    assert count_parameters(model) < count_parameters(create_model("dae_fuse_t"))


def _ones_for_norm_weights(model) -> None:
    # timm zero-initialises the last norm of each residual block (zero gradient before it at step 0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize("phase", ["recon", "fuse"])
def test_each_switch_trains_every_parameter_of_a_phase(switch, phase):
    torch.manual_seed(0)
    model = create_model("dae_fuse_t", **SWITCHES[switch][0])
    _ones_for_norm_weights(model)
    content, _ = PHASES.get(phase).generate(model, Losses(tiny_config()), *_rand_pair(2, 32, 32))
    content["total"].backward()
    assert_phase_gradients(model, phase, f"{switch} ")


@pytest.mark.parametrize("args, adversarial, optimizers", [
    # concat's projection is trained by phase 2 only: its own optimiser (optim.fusion_lr_restart)
    ({"encoder": "cnn", "fusion": "concat", "skip_fusion": "max"}, False, {"g", "g_fusion"}),
    # weight-free fusion rules: phase 2 trains what phase 1 does, so there is no fusion optimiser either
    ({"encoder": "transformer", "fusion": "average", "skip_fusion": "average"}, True, {"g", "d_ir", "d_vis"}),
])
def test_switches_round_trip_through_the_trainer_and_the_fuser(tmp_path, synthetic_root, args, adversarial, optimizers):
    """Saved by the trainer, loaded by fusion.fusers.fuse, fused; without adversarial training nothing of the
    discriminators is built, stepped or saved, and the run still resumes."""
    cfg = tiny_config(f"model.args={json.dumps(args)}", f"adversarial={str(adversarial).lower()}")
    result = train(cfg, synthetic_root, tmp_path / "run", progress=False)
    state = load_checkpoint(result.last_checkpoint)[1]
    assert ("discriminators" in state) == adversarial
    assert set(state["optimizers"]) == set(state["schedulers"]) == optimizers
    assert any(k.startswith("g_adv") for k in result.final_losses) == adversarial
    assert any(k.startswith("d_") for k in result.final_losses) == adversarial
    assert state["model_config"] == create_model("dae_fuse_t", **args).cfg.to_dict()

    fuser = load_fuser_checkpoint(result.best_checkpoint)
    assert fuser.model.cfg == create_model("dae_fuse_t", **args).cfg
    pair = load_m3fd(synthetic_root).pairs("test")[0]
    ir = read_ir(pair.ir).astype(np.float32)
    fused = fuser.fuse_luma(ir, read_visible(pair.vis)[0])
    assert fused.shape == ir.shape and np.isfinite(fused).all()
    again = train(cfg, synthetic_root, tmp_path / "run", progress=False, resume=True)  # complete: nothing to train
    assert again.final_losses == result.final_losses


def test_variants_are_config_overlays():
    base = tiny_config()
    assert {"full", "no_cross_attention", "cnn_only", "no_adversary", "skip_average", "skip_max"} <= set(VARIANTS)
    full = variant_config(base, "full", 2.5, 1)
    assert (full.max_minutes, full.seed, full.model) == (2.5, 1, base.model)
    assert variant_config(base, "no_cross_attention", 2.5, 0).model.args == {"fusion": "concat"}
    assert not variant_config(base, "no_adversary", 2.5, 0).adversarial
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5)}
    assert mean_std([1.0]) == {"mean": 1.0, "std": None}


def test_ablation_cli_trains_scores_and_resumes(tmp_path, synthetic_root, capsys):
    split = load_m3fd(synthetic_root)
    eval_dir = tmp_path / "eval_set"
    for sub in ("ir", "vi"):
        (eval_dir / sub).mkdir(parents=True)
    for pair in split.pairs("test")[:2]:
        shutil.copy(pair.ir, eval_dir / "ir")
        shutil.copy(pair.vis, eval_dir / "vi")
    out = tmp_path / "ablation"
    argv = ["--data", str(synthetic_root), "--variants", "full", "no_cross_attention", "--minutes", "5",
            "--seeds", "0", "1", "--out", str(out), "--eval", f"tiny={eval_dir}", "--preset", "tiny"]
    assert main(argv) == 0
    report = json.loads((out / "ablation.json").read_text())
    assert list(report["variants"]) == ["full", "no_cross_attention"] and report["seeds"] == [0, 1]
    assert {"torch", "timm", "numpy"} <= set(report["versions"])
    for v in report["variants"].values():
        assert set(v["eval"]["tiny"]) == set(metric_names())
        assert all(s["std"] is not None for s in v["eval"]["tiny"].values())
        assert v["generator_parameters"] == count_parameters(create_model("dae_fuse_t", **v["config"]["model"]["args"]))
        assert v["cpu_ms_per_1024x768"] > 0 and set(v["seeds"]) == {"0", "1"}
        assert v["config"]["max_minutes"] == 5.0
    assert report["variants"]["no_cross_attention"]["config"]["model"]["args"] == {"fusion": "concat"}
    table = (out / "ablation.md").read_text()
    assert "| no_cross_attention |" in table and " ± " in table and "Qabf" in table

    # A second call resumes: no run is retrained, the scores are reused.
    last = out / "runs" / "full" / "seed1" / "last.pt"
    mtime = last.stat().st_mtime_ns
    assert main(argv) == 0
    assert last.stat().st_mtime_ns == mtime
    again = json.loads((out / "ablation.json").read_text())
    assert again["variants"]["full"]["eval"] == report["variants"]["full"]["eval"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*argv[:4], "no_such_variant", *argv[5:]])
    assert "unknown variant(s) no_such_variant" in capsys.readouterr().err


def test_evaluation_images_and_scores_are_the_stores(tmp_path, synthetic_root, monkeypatch):
    """A run's fused evaluation set is a resumable store folder and its scores a stage record: both reused; another
    checkpoint's images (a killed partial folder, or a folder an earlier version fused) are replaced, never mixed
    in or refused."""
    from data.io import write_record
    from data.store import PROGRESS_NAME, finished
    from fusion.training import ablate
    from fusion.fusers.fuse import FUSER_MARKER

    checkpoint = train(tiny_config("phases=[{name: fuse, epochs: 1}]"), synthetic_root, tmp_path / "run",
                       progress=False).last_checkpoint
    eval_dir = tmp_path / "eval_set"
    for sub in ("ir", "vi"):
        (eval_dir / sub).mkdir(parents=True)
    for pair in load_m3fd(synthetic_root).pairs("test")[:2]:
        shutil.copy(pair.ir, eval_dir / "ir")
        shutil.copy(pair.vis, eval_dir / "vi")
    sets = ablate.resolve_eval_sets({"tiny": eval_dir})
    out = tmp_path / "run" / "eval"

    # a killed evaluation of another checkpoint left its partial folder
    partial = out / "tiny.partial"
    partial.mkdir(parents=True)
    (partial / "stale.png").write_bytes(b"another checkpoint's image")
    write_record(partial / PROGRESS_NAME, "another key", {})
    first = ablate.evaluate_checkpoint(checkpoint, sets, out)
    assert set(first["tiny"]) == set(metric_names())
    assert finished(out / "tiny") == {"images": 2} and not partial.exists()
    assert sorted(p.name for p in (out / "tiny").glob("*.png")) == sorted(p.name for p in (eval_dir / "ir").iterdir())

    with monkeypatch.context() as patch:
        patch.setattr(ablate, "fuse_folder", lambda *a, **k: pytest.fail("finished fusing was redone"))
        patch.setattr(ablate, "evaluate_triples", lambda *a, **k: pytest.fail("finished scores were redone"))
        assert ablate.evaluate_checkpoint(checkpoint, sets, out) == first

    # The previous version's folder: images and a fuser marker of another checkpoint, no records. It made
    # fuse_folder refuse to resume; now the folder is fused again and replaced.
    (out / "tiny.json").unlink()
    (out / "tiny" / ".record.json").unlink()
    write_record(out / "tiny" / FUSER_MARKER, "dae_fuse:another", {"fuser": "dae_fuse"})
    assert ablate.evaluate_checkpoint(checkpoint, sets, out) == first
    assert finished(out / "tiny") == {"images": 2}
