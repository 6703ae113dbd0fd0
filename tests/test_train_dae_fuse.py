"""DAE-Fuse trainer: configuration as data, tiny runs, exact resume, the non-finite guard, DDP with world size 1."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import cv2

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel

from data.errors import DatasetError
from data.io import read_ir, read_visible
from data.m3fd import load_m3fd
from fusion.training.config import (
    CONFIG_DIR,
    PRESETS,
    ConfigError,
    FusionTrainConfig,
    PhaseConfig,
    dump_config,
    load_train_config,
    replace_config,
)
from fusion.fusers.base import fuse_pair
from fusion.fusers.catalog import create_fuser
from fusion.fusers.fuse import CheckpointError, load_fuser_checkpoint
from fusion.models.checkpoint import release_state, save_checkpoint
from fusion.training.data import PairedCropDataset, resolve_training_pairs, split_validation
from fusion.training.train import NonFiniteLossError, Trainer, main, train
from tests.conftest import shared_path
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [*PRESETS, "mri_ct", "mri_pet", "mri_spect"])
def test_config_round_trip(tmp_path, source):
    """YAML -> dataclass -> YAML -> dataclass gives the same config and the same text (args.yaml reloads)."""
    if source in PRESETS:
        cfg = load_train_config(preset=source)
    else:
        cfg = load_train_config(CONFIG_DIR / f"{source}.yaml", preset="quick")
    text = dump_config(cfg)
    (tmp_path / "args.yaml").write_text(text)
    again = load_train_config(tmp_path / "args.yaml")
    assert again == cfg
    assert dump_config(again) == text


def test_paper_preset_documents_the_defaults():
    """paper.yaml lists every key with its source; it must say exactly what the dataclass defaults are."""
    assert load_train_config(preset="paper") == FusionTrainConfig()
    documented = yaml.safe_load((CONFIG_DIR / "paper.yaml").read_text())
    assert set(documented) == set(yaml.safe_load(dump_config(FusionTrainConfig())))


def test_overrides_are_typed_and_checked():
    cfg = load_train_config(
        preset="tiny",
        overrides=[
            "optim.lr_g=2e-4", "data.batch_size=3", "phases=[{name: fuse, epochs: 3}]", "model.args.vit_depth=2"
        ],
    )
    assert cfg.optim.lr_g == 2e-4 and cfg.data.batch_size == 3
    assert cfg.phases == (PhaseConfig("fuse", 3),)
    assert cfg.model.args == {"vit_depth": 2} and cfg.model.name == "dae_fuse_t"
    with pytest.raises(ConfigError, match="data.batch_size: expected an integer"):
        load_train_config(preset="tiny", overrides=["data.batch_size=many"])
    with pytest.raises(ConfigError, match="unknown key.*lr.*known: lr_g"):
        load_train_config(preset="tiny", overrides=["optim.lr=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_train_config(overrides=["seed"])


def test_model_args_and_best_metric_are_checked_at_load():
    """Names that point into other modules are checked when the config loads, with the known values listed."""
    with pytest.raises(ConfigError, match="model.args: unknown DAEFuseConfig field.*vit_dpth; known: .*vit_depth"):
        load_train_config(preset="tiny", overrides=["model.args.vit_dpth=2"])
    with pytest.raises(ConfigError, match="model.args: .*cnn_norm must be one of batchnorm, groupnorm, identity"):
        load_train_config(preset="tiny", overrides=["model.args.cnn_norm=layernorm"])
    with pytest.raises(ConfigError, match="model.name: unknown fusion model 'dae_fuse_xl'; known: dae_fuse_t"):
        load_train_config(preset="tiny", overrides=["model.name=dae_fuse_xl"])
    with pytest.raises(ConfigError, match="best_metric: unknown metric 'qabf'; known: EN, .*Qabf, SSIM, fusion_loss"):
        load_train_config(preset="tiny", overrides=["best_metric=qabf"])
    assert load_train_config(preset="tiny", overrides=["best_metric=fusion_loss"]).best_metric == "fusion_loss"


# -- data ------------------------------------------------------------------------------------------------------


def test_m3fd_root_trains_on_its_train_split():
    root = shared_path("m3fd_sample")
    train_pairs, val_pairs = resolve_training_pairs(root, tiny_config().data)
    m3fd = load_m3fd(root)
    assert [p.stem for p in train_pairs] == [p.stem for p in m3fd.pairs("train")]
    assert [p.stem for p in val_pairs] == [p.stem for p in m3fd.pairs("val")]


def test_split_selects_the_m3fd_split_and_paired_folders_have_none(synthetic_root):
    m3fd = load_m3fd(synthetic_root)
    train_pairs, val_pairs = resolve_training_pairs(synthetic_root, tiny_config().data, split="test")
    assert train_pairs == m3fd.pairs("test") and val_pairs == m3fd.pairs("val")
    cfg = tiny_config("data.ir_dir=Ir", "data.vis_dir=Vis")  # the same folder read as plain paired folders
    assert len(sum(resolve_training_pairs(synthetic_root, cfg.data), [])) == len(m3fd.pairs())
    with pytest.raises(ValueError, match="without splits"):
        resolve_training_pairs(synthetic_root, cfg.data, split="test")


def test_medical_roles_are_configuration():
    root = shared_path("fusion_benchmarks", "MRI_CT")
    cfg = load_train_config(CONFIG_DIR / "mri_ct.yaml", preset="tiny")
    train_pairs, val_pairs = resolve_training_pairs(root, cfg.data)
    assert all(p.ir.parent.name == "CT" and p.vis.parent.name == "MRI" for p in train_pairs + val_pairs)
    assert len(val_pairs) == 3 and not {p.stem for p in train_pairs} & {p.stem for p in val_pairs}


def _write_images(folder: Path, stems: list[str], colour: bool) -> None:
    folder.mkdir(parents=True)
    for i, stem in enumerate(stems):
        image = np.full((24, 32, 3) if colour else (24, 32), 40 * i, np.uint8)
        if colour:
            image[..., 2] = 200  # a red cast: chroma that must survive fusion
        cv2.imwrite(str(folder / f"{stem}.png"), image)


def test_colour_functional_image_plays_the_visible_role(tmp_path):
    """Recognised medical folders: the colour image (PET, SPECT) plays "vis", so its chroma is kept, and MRI "ir";
    beside grey CT, MRI plays "vis". A root where one folder would play both roles is refused."""
    stems = ["a", "b", "c"]
    for functional, colour in (("PET", True), ("SPECT", True), ("CT", False)):
        _write_images(tmp_path / functional / "MRI", stems, colour=False)
        _write_images(tmp_path / functional / functional, stems, colour=colour)
        pairs = sum(resolve_training_pairs(tmp_path / functional, tiny_config().data), [])
        expected = ("CT", "MRI") if functional == "CT" else ("MRI", functional)
        assert {(p.ir.parent.name, p.vis.parent.name) for p in pairs} == {expected}
        if colour:
            assert fuse_pair(create_fuser("mean"), pairs[0]).ndim == 3  # the fused image keeps the PET/SPECT colour
    _write_images(tmp_path / "only" / "MRI", stems, colour=False)
    with pytest.raises(DatasetError, match="would play both the infrared and the visible role"):
        resolve_training_pairs(tmp_path / "only", tiny_config().data)


@pytest.mark.parametrize("name, functional, n_val", [("MRI_PET", "PET", 4), ("MRI_SPECT", "SPECT", 3)])
def test_medical_colour_configs(name, functional, n_val):
    """The README's MRI-PET command (and its MRI-SPECT sibling) resolve their shared folders, PET/SPECT as "vis"."""
    root = shared_path("fusion_benchmarks", name)
    cfg = load_train_config(CONFIG_DIR / f"{name.lower()}.yaml", preset="tiny")
    train_pairs, val_pairs = resolve_training_pairs(root, cfg.data)
    assert all(p.ir.parent.name == "MRI" and p.vis.parent.name == functional for p in train_pairs + val_pairs)
    assert len(val_pairs) == n_val
    auto = sum(resolve_training_pairs(root, tiny_config().data), [])  # recognised by folder name alike
    assert sorted(p.stem for p in auto) == sorted(p.stem for p in train_pairs + val_pairs)
    assert {(p.ir, p.vis) for p in auto} == {(p.ir, p.vis) for p in train_pairs + val_pairs}


def test_validation_split_is_deterministic_and_disjoint(synthetic_root):
    pairs = load_m3fd(synthetic_root).pairs()
    train_a, val_a = split_validation(pairs, 0.25)
    train_b, val_b = split_validation(pairs, 0.25)
    assert val_a == val_b and len(val_a) == 2 and len(train_a) + len(val_a) == len(pairs)
    assert split_validation(pairs[:1], 0.25) == (pairs[:1], pairs[:1])


def test_crops_are_paired_and_reproducible(synthetic_root):
    pairs = load_m3fd(synthetic_root).pairs("train")
    ds = PairedCropDataset(pairs, crop_size=24, crops_per_image=2, hflip=True, vflip=True, seed=3)
    first = ds[1]
    assert first["ir"].shape == first["vis"].shape == (1, 24, 24)
    again = ds[1]
    assert torch.equal(first["ir"], again["ir"]) and torch.equal(first["vis"], again["vis"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["ir"], first["ir"])
    # The same window of both images: locate the IR crop in the full IR image and compare the visible crop there.
    ds.set_epoch(0)
    ir_full = read_ir(pairs[1].ir).astype(np.float32) / 255
    vis_full = read_visible(pairs[1].vis)[0] / 255
    crop_ir, crop_vis = first["ir"][0].numpy(), first["vis"][0].numpy()
    found = False
    for flip_v in (False, True):
        for flip_h in (False, True):
            ir_img = ir_full[::-1 if flip_v else 1, ::-1 if flip_h else 1]
            vis_img = vis_full[::-1 if flip_v else 1, ::-1 if flip_h else 1]
            for y in range(ir_img.shape[0] - 23):
                for x in range(ir_img.shape[1] - 23):
                    if np.array_equal(ir_img[y : y + 24, x : x + 24], crop_ir):
                        found = found or np.allclose(vis_img[y : y + 24, x : x + 24], crop_vis, atol=1e-6)
    assert found


def test_blackout_puts_the_same_black_regions_in_both_crops(synthetic_root):
    pairs = load_m3fd(synthetic_root).pairs("train")
    plain = PairedCropDataset(pairs, crop_size=32, crops_per_image=2, seed=3)
    blacked = PairedCropDataset(pairs, crop_size=32, crops_per_image=2, seed=3, blackout_prob=1.0)
    for i in range(4):
        a, b = plain[i], blacked[i]
        holes = (b["ir"] == 0) & (b["vis"] == 0)
        changed = (a["ir"] != b["ir"]) | (a["vis"] != b["vis"])
        # 1-3 holes of 20-60 % of the side each: at least 4 % of the crop, black in both images, nothing else touched
        assert holes.float().mean() >= 0.04
        assert torch.equal(changed & ~holes, torch.zeros_like(changed))
    with pytest.raises(ValueError, match="blackout_prob"):
        tiny_config("data.blackout_prob=1.5")


# -- training runs ---------------------------------------------------------------------------------------------


def test_cli_trains_with_preset_seed_and_overrides(tmp_path, synthetic_root, capsys):
    out = tmp_path / "cli"
    assert main(["--data", str(synthetic_root), "--out", str(out), "--preset", "tiny", "--seed", "3", "--no-progress",
                 "phases=[{name: fuse, epochs: 1}]"]) == 0
    saved = load_train_config(out / "args.yaml")
    assert saved.seed == 3 and saved.phases == (PhaseConfig("fuse", 1),) and saved.model.name == "dae_fuse_t"
    assert "last" in capsys.readouterr().out and (out / "best.pt").is_file()


def test_unknown_phase_is_refused_before_training(tmp_path, synthetic_root):
    with pytest.raises(ConfigError, match="unknown phase.*warmup.*known: recon, fuse"):
        train(tiny_config("phases=[{name: warmup, epochs: 1}]"), synthetic_root, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def _params(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out.update({f"d.{k}": v for k, v in state["discriminators"].items()})
    for name, opt in state["optimizers"].items():
        for idx, s in opt["state"].items():
            out.update({f"opt.{name}.{idx}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return out


def test_tiny_run_fuses(tmp_path, synthetic_root):
    result = train(tiny_config(), synthetic_root, tmp_path / "run", progress=False)
    assert result.last_checkpoint.is_file() and result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert load_train_config(tmp_path / "run" / "args.yaml") == tiny_config()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert set(result.final_losses) >= {"g_total", "g_intensity", "g_grad", "g_adv_ir", "g_adv_vis", "d_total"}
    assert {"Qabf", "VIF", "fusion_loss"} <= set(result.val_metrics)
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and state["phase"] == "fuse" and state["architecture"] == "dae_fuse"
    assert {"model", "discriminators", "optimizers", "schedulers", "scaler", "cfg", "versions", "rng"} <= set(state)

    pair = load_m3fd(synthetic_root).pairs("test")[0]
    ir = read_ir(pair.ir).astype(np.float32)
    vis, _ = read_visible(pair.vis)
    fused = load_fuser_checkpoint(result.best_checkpoint).fuse_luma(ir, vis)
    assert fused.shape == ir.shape and fused.dtype == np.float32
    assert np.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 255
    assert np.abs(fused - ir).mean() > 1 and np.abs(fused - vis).mean() > 1


def test_resume_continues_exactly(tmp_path, synthetic_root):
    """A run killed in the middle of epoch 2 and resumed ends with the same parameters, discriminators and
    optimiser states, bit for bit, as the run that was never interrupted."""
    cfg = tiny_config("phases=[{name: recon, epochs: 1}, {name: fuse, epochs: 2}]")
    whole = train(cfg, synthetic_root, tmp_path / "whole", progress=False)

    class Killed(Exception):
        pass

    def kill_mid_epoch_two(trainer: Trainer) -> None:
        if trainer.epoch == 1 and trainer.global_step == len(trainer.loader) + 1:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, synthetic_root, tmp_path / "cut", progress=False, callbacks={"on_step_end": [kill_mid_epoch_two]})
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = train(cfg, synthetic_root, tmp_path / "cut", progress=False, resume=True)

    a, b = _params(whole.last_checkpoint), _params(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]
    assert resumed.final_losses == whole.final_losses
    # A finished run resumes to itself without training.
    again = train(cfg, synthetic_root, tmp_path / "cut", progress=False, resume=True)
    assert again.final_losses == whole.final_losses


def test_resume_refuses_another_config(tmp_path, synthetic_root):
    cfg = tiny_config("phases=[{name: fuse, epochs: 1}]")
    train(cfg, synthetic_root, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="optim.lr_g"):
        train(tiny_config("phases=[{name: fuse, epochs: 1}]", "optim.lr_g=0.5"), synthetic_root, tmp_path / "run",
              progress=False, resume=True)


def test_resume_checks_last_pt(tmp_path, synthetic_root):
    """Resuming refuses, with one clear error each, a damaged last.pt, one that runs code, one missing entries and
    another data root; it accepts changed operational keys and a checkpoint that predates the recorded root."""
    cfg = tiny_config("phases=[{name: fuse, epochs: 1}]")
    run = tmp_path / "run"
    train(cfg, synthetic_root, run, progress=False)
    last = run / "last.pt"
    good = last.read_bytes()
    state = torch.load(last, weights_only=False)
    assert state["data_root"] == str(synthetic_root.resolve())

    def resume(config=cfg, root=synthetic_root):
        return train(config, root, run, progress=False, resume=True)

    # Operational keys change nothing a run computes: a finished run resumes to itself.
    assert resume(tiny_config("phases=[{name: fuse, epochs: 1}]", "data.cache_images=false", "data.num_workers=1",
                              "num_samples=0")).epochs == 1
    other_root = tmp_path / "copy"
    shutil.copytree(synthetic_root, other_root)
    with pytest.raises(ConfigError, match=r"different configuration.*\n  data_root: .*\(checkpoint\) vs .*copy"):
        resume(root=other_root)
    torch.save({k: v for k, v in state.items() if k != "data_root"}, last)  # written before the root was recorded
    assert resume(root=other_root).epochs == 1

    last.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cannot resume from .*last.pt: not a PyTorch checkpoint"):
        resume()
    torch.save({**state, "extra": DatasetError("x", ["y"])}, last)
    with pytest.raises(CheckpointError, match="cannot resume from .*last.pt: not a DAE-Fuse checkpoint"):
        resume()
    torch.save({k: v for k, v in state.items() if k not in ("optimizers", "rng")}, last)
    with pytest.raises(CheckpointError, match="cannot resume from .*last.pt: it lacks optimizers, rng"):
        resume()
    torch.save({**state, "model": {}}, last)
    with pytest.raises(CheckpointError, match="cannot resume from .*last.pt: its states do not fit this run"):
        resume()


def test_best_checkpoint_survives_an_interruption_between_writes(tmp_path, synthetic_root, monkeypatch):
    """Killed while writing the checkpoints of a fusion epoch, then resumed: best.pt exists and holds the best
    epoch that last.pt records."""
    cfg = tiny_config("phases=[{name: recon, epochs: 1}, {name: fuse, epochs: 1}]")
    save = Trainer.save_checkpoint

    class Killed(Exception):
        pass

    def killed_at_best(trainer, path, state):
        if path.name == "best.pt":
            raise Killed
        save(trainer, path, state)

    monkeypatch.setattr(Trainer, "save_checkpoint", killed_at_best)
    with pytest.raises(Killed):
        train(cfg, synthetic_root, tmp_path / "run", progress=False)
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    result = train(cfg, synthetic_root, tmp_path / "run", progress=False, resume=True)
    last = torch.load(result.last_checkpoint, weights_only=False)
    assert result.best_checkpoint is not None and last["best"]["epoch"] == 2
    assert torch.load(result.best_checkpoint, weights_only=False)["epoch"] == 2


@pytest.mark.parametrize("metric, values, best_epoch", [
    ("Qabf", [0.4, 0.6], 2), ("Qabf", [0.6, 0.4], 1),                # maximised
    ("fusion_loss", [0.5, 0.3], 2), ("fusion_loss", [0.3, 0.5], 1),  # minimised
])
def test_best_pt_is_the_epoch_with_the_best_validation_value(tmp_path, synthetic_root, monkeypatch, metric, values,
                                                              best_epoch):
    """Two fusion epochs whose validation ``metric`` is scripted: best.pt holds the weights of the better epoch (the
    higher Qabf, the lower fusion loss), whichever comes first, and last.pt records it."""
    validate = Trainer.validate

    def scripted(trainer):
        measured = validate(trainer)
        assert metric in measured  # the metric is really computed on these images; only its value is scripted
        return {**measured, metric: values[trainer.epoch]}

    weights_after = {}

    def keep_weights(trainer):
        weights_after[trainer.epoch + 1] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    monkeypatch.setattr(Trainer, "validate", scripted)
    cfg = tiny_config("phases=[{name: fuse, epochs: 2}]", f"best_metric={metric}")
    result = train(cfg, synthetic_root, tmp_path / "run", progress=False, callbacks={"on_epoch_end": [keep_weights]})
    best = torch.load(result.best_checkpoint, weights_only=False)
    last = torch.load(result.last_checkpoint, weights_only=False)
    assert best["epoch"] == best_epoch and last["epoch"] == 2
    assert last["best"] == {"metric": metric, "value": values[best_epoch - 1], "epoch": best_epoch}
    other = 3 - best_epoch
    assert any(not torch.equal(weights_after[1][k], weights_after[2][k]) for k in weights_after[1])
    assert all(torch.equal(best["model"][k], weights_after[best_epoch][k]) for k in best["model"])
    assert not all(torch.equal(best["model"][k], weights_after[other][k]) for k in best["model"])


def test_resume_restores_a_best_checkpoint_lost_after_last_pt(tmp_path, synthetic_root):
    """A run interrupted after last.pt but before best.pt (the order of earlier versions) left a last.pt whose best
    epoch is itself: resuming restores best.pt from it."""
    cfg = tiny_config("phases=[{name: fuse, epochs: 1}]")
    result = train(cfg, synthetic_root, tmp_path / "run", progress=False)
    result.best_checkpoint.unlink()
    again = train(cfg, synthetic_root, tmp_path / "run", progress=False, resume=True)
    assert again.best_checkpoint is not None
    assert again.best_checkpoint.read_bytes() == again.last_checkpoint.read_bytes()


def test_non_finite_loss_stops_without_a_checkpoint(tmp_path, synthetic_root):
    cfg = tiny_config("loss.fuse_intensity=.nan")
    with pytest.raises(NonFiniteLossError, match=r"phase 'fuse' \(intensity, total\).*'intensity': nan"):
        train(cfg, synthetic_root, tmp_path / "run", progress=False)
    # Phase 1 finished and was saved; nothing of the failed fusion step was.
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "run" / "best.pt").exists()
    assert not list((tmp_path / "run").glob(".*tmp*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_world_size_one_matches_a_plain_run(tmp_path, synthetic_root, monkeypatch):
    """The torchrun path (env:// process group, gloo on CPU, DistributedDataParallel, DistributedSampler) with one
    process trains the same model as the plain path."""
    cfg = tiny_config("phases=[{name: recon, epochs: 1}, {name: fuse, epochs: 1}]")
    plain = train(cfg, synthetic_root, tmp_path / "plain", progress=False)
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    wrapped = []

    def record_wrapping(trainer) -> None:
        wrapped.append(isinstance(trainer.generator_step, DistributedDataParallel))

    ddp = train(cfg, synthetic_root, tmp_path / "ddp", progress=False, callbacks={"on_train_start": [record_wrapping]})
    assert wrapped == [True]
    assert not dist.is_initialized()  # the group train() opened is closed again
    a, b = _params(plain.last_checkpoint), _params(ddp.last_checkpoint)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_cli_refuses_a_missing_split_and_bad_numbers_without_a_traceback(synthetic_root, tmp_path, capsys):
    for bad in (["--split", "nosuch"], ["data.batch_size=0"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["--data", str(synthetic_root), "--out", str(tmp_path / "run"), "--preset", "tiny",
                  "--device", "cpu", "--no-progress", *bad])
        assert exit_info.value.code == 2, bad
    err = capsys.readouterr().err
    assert "split 'nosuch' is empty or missing" in err and "batch_size must be at least 1" in err
    assert "seed must be non-negative" in err and "Traceback" not in err


def _paired_copy(dataset, folder: Path, n: int) -> Path:
    """A paired folder (ir/ + vi/) of the first n pairs, under the same stems as the M3FD root's."""
    (folder / "ir").mkdir(parents=True)
    (folder / "vi").mkdir()
    for pair in dataset.pairs()[:n]:
        shutil.copy(pair.ir, folder / "ir" / f"{pair.stem}.png")
        shutil.copy(pair.vis, folder / "vi" / f"{pair.stem}.png")
    return folder


def test_several_roots_pool_their_training_pairs(tmp_path, synthetic_root):
    from fusion.training.data import resolve_training_roots

    cfg = tiny_config("data.val_fraction=0.25")
    paired = _paired_copy(load_m3fd(synthetic_root), tmp_path / "roadscene", 8)
    train_pairs, val_pairs = resolve_training_roots([synthetic_root, paired], cfg.data)
    m3fd_train, m3fd_val = resolve_training_pairs(synthetic_root, cfg.data)
    paired_train, paired_val = resolve_training_pairs(paired, cfg.data)
    assert train_pairs == m3fd_train + paired_train and len(paired_train) == 6
    # validation interleaved root by root: the few pairs scored per epoch come from both
    assert val_pairs[:2] == [m3fd_val[0], paired_val[0]] and len(val_pairs) == len(m3fd_val) + len(paired_val)
    # the same stem in two roots is two images, not one cached twice
    crops = PairedCropDataset(train_pairs, 32, cache_images=True)
    for i in range(len(crops)):
        crops[i]
    assert len(crops.cache) == len(train_pairs)
    with pytest.raises(DatasetError, match="more than once"):
        resolve_training_roots([paired, paired], cfg.data)
    with pytest.raises(DatasetError) as err:
        resolve_training_roots([paired, tmp_path / "missing", tmp_path], cfg.data)
    assert str(tmp_path / "missing") in str(err.value) and str(err.value).count("  - ") >= 2  # both bad roots


def test_training_on_several_roots_records_and_resumes_them(tmp_path, synthetic_root):
    paired = _paired_copy(load_m3fd(synthetic_root), tmp_path / "roadscene", 4)
    out = tmp_path / "run"
    train(tiny_config("phases=[{name: fuse, epochs: 1}]"), [synthetic_root, paired], out, progress=False)
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["data_root"] == [str(synthetic_root.resolve()), str(paired.resolve())]
    assert state["fusion_epochs"] == 1
    cfg = tiny_config("phases=[{name: fuse, epochs: 1}]")
    with pytest.raises(ConfigError, match="data_root"):
        train(cfg, [synthetic_root], out, resume=True, progress=False)
    stamp = (out / "last.pt").stat().st_mtime_ns
    train(cfg, [synthetic_root, paired], out, resume=True, progress=False)  # the same roots: complete, nothing redone
    assert (out / "last.pt").stat().st_mtime_ns == stamp


# -- CDDFuse's optimisation, the time budget, configs that predate an option -----------------------------------


def test_clipping_per_module_or_jointly(tmp_path, synthetic_root, monkeypatch):
    """CDDFuse clips each module's gradient norm on its own: in phase 2 the encoder, both fusion rules and the
    decoder; in phase 1 only the modules that have gradients (encoder, decoder)."""
    clipped: list[int] = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda ps, c: clipped.append(len(ps)) or clip(ps, c))
    for per_module, calls in ((True, {"recon": 2, "fuse": 4}), (False, {"recon": 1, "fuse": 1})):
        trainer = Trainer(tiny_config(f"optim.grad_clip_per_module={str(per_module).lower()}"), synthetic_root,
                          tmp_path / f"run{per_module}", progress=False, tb_writer=object())
        batch = next(iter(trainer.loader))
        model = trainer.model
        for phase, n in calls.items():
            clipped.clear()
            trainer.train_step(batch, phase)
            assert len(clipped) == n, (per_module, phase, clipped)
        if per_module:
            assert clipped == [len(list(m.parameters())) for m in model.children()]
        else:
            assert clipped == [len(list(model.parameters()))]


def test_fusion_layers_start_phase_two_at_the_base_learning_rate(tmp_path, synthetic_root):
    """optim.fusion_lr_restart (CDDFuse): the phase-2-only layers' schedule steps in fusion epochs only."""
    phases = "phases=[{name: recon, epochs: 2}, {name: fuse, epochs: 1}]"
    lrs = {}
    for restart in (True, False):
        cfg = tiny_config(phases, "optim.lr_step=1", "num_samples=0", f"optim.fusion_lr_restart={str(restart).lower()}")
        seen = lrs[restart] = []

        def record(t: Trainer, seen=seen) -> None:
            seen.append({k: o.param_groups[0]["lr"] for k, o in t.optimizers.items()})

        train(cfg, synthetic_root, tmp_path / str(restart), progress=False, callbacks={"on_epoch_start": [record]})
    base = tiny_config().optim.lr_g
    assert [e["g"] for e in lrs[True]] == [e["g"] for e in lrs[False]] == [base, base / 2, base / 4]
    assert lrs[True][2]["g_fusion"] == base and "g_fusion" not in lrs[False][2]


def test_time_budget_ends_each_phase_and_a_resumed_run_counts_the_same(tmp_path, synthetic_root):
    """max_minutes is shared among the phases in proportion to their epochs: a phase whose share is spent ends
    after its current epoch, so every phase trains at least one epoch and best.pt is written."""
    cfg = tiny_config("phases=[{name: recon, epochs: 3}, {name: fuse, epochs: 3}]", "max_minutes=1e-6")
    result = train(cfg, synthetic_root, tmp_path / "run", progress=False)
    state = torch.load(result.last_checkpoint, weights_only=False)
    assert [(e["epoch"], e["phase"]) for e in state["history"]] == [(1, "recon"), (4, "fuse")]
    assert state["next_epoch"] == 6 and result.best_checkpoint is not None
    stamp = result.last_checkpoint.stat().st_mtime_ns
    again = train(cfg, synthetic_root, tmp_path / "run", progress=False, resume=True)
    assert again.final_losses == result.final_losses and result.last_checkpoint.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="max_minutes: 1e-06 \\(checkpoint\\) vs 2.0 \\(given\\)"):
        train(replace_config(cfg, "max_minutes=2"), synthetic_root, tmp_path / "run", progress=False, resume=True)


def test_a_checkpoint_that_predates_the_options_resumes_with_what_it_trained_with(tmp_path, synthetic_root):
    """A config saved before an option existed means the option's old value (fusion.training.config.LEGACY_VALUES):
    resuming it under today's defaults is refused with the differences listed; under the old values it continues, and
    its model_config (without the ablation switches) still builds the full model."""
    legacy = ("loss.ssim_loss=one_minus", "loss.recon_grad_targets=[ir, vis]", "loss.recon_sobel_normalized=false",
              "optim.grad_clip_per_module=false", "optim.fusion_lr_restart=false")
    phases = "phases=[{name: recon, epochs: 1}, {name: fuse, epochs: 2}]"
    run = tmp_path / "run"
    train(tiny_config(*legacy), synthetic_root, run, progress=False)  # recon 1, fuse 1; made to look cut short below
    state = torch.load(run / "last.pt", weights_only=False)
    new_keys = {"loss": ("ssim_loss", "recon_grad_targets", "recon_sobel_normalized"),
                "optim": ("grad_clip_per_module", "fusion_lr_restart"), "": ("adversarial", "max_minutes")}
    cfg = state["cfg"]
    for block, keys in new_keys.items():
        for key in keys:
            (cfg[block] if block else cfg).pop(key)
    cfg["phases"] = [{"name": "recon", "epochs": 1}, {"name": "fuse", "epochs": 2}]  # as if cut after epoch 2
    state["model_config"] = {k: v for k, v in state["model_config"].items()
                             if k not in ("encoder", "fusion", "skip_fusion")}
    state.pop("next_epoch")
    save_checkpoint(run / "last.pt", state)
    with pytest.raises(ConfigError, match="loss.ssim_loss: 'one_minus' \\(checkpoint\\) vs 'kornia' \\(given\\)"):
        train(tiny_config(phases), synthetic_root, run, progress=False, resume=True)
    result = train(tiny_config(phases, *legacy), synthetic_root, run, progress=False, resume=True)
    assert [e["epoch"] for e in torch.load(result.last_checkpoint, weights_only=False)["history"]] == [1, 2, 3]
    assert load_fuser_checkpoint(result.best_checkpoint).model.cfg.encoder == "dual"


def test_model_init_starts_from_another_checkpoints_generator(tmp_path, synthetic_root):
    first = train(tiny_config(), synthetic_root, tmp_path / "first", progress=False).last_checkpoint
    start = torch.load(first, map_location="cpu", weights_only=False)["model"]
    trainer = Trainer(tiny_config(f"model.init={first}"), synthetic_root, tmp_path / "tuned")
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in start.items())
    fresh = Trainer(tiny_config(), synthetic_root, tmp_path / "fresh")
    assert not all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in start.items())
    # a released file (bf16, generator only) starts a run too; another architecture is one clear error
    released = tmp_path / "released.pt"
    save_checkpoint(released, release_state(torch.load(first, map_location="cpu", weights_only=False)))
    tuned = Trainer(tiny_config(f"model.init={released}"), synthetic_root, tmp_path / "tuned2")
    assert all(torch.equal(v, start[k].to(torch.bfloat16).float()) for k, v in tuned.model.state_dict().items()
               if v.is_floating_point())
    with pytest.raises(CheckpointError, match="another architecture"):
        Trainer(tiny_config(f"model.init={first}", "model.args={vit_depth: 2}"), synthetic_root, tmp_path / "x")
