"""DAE-Fuse inference: the checkpoint fuser, checkpoint validation, folder fusion and the fuse CLI."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import fusion.models.dae_fuse
from data.io import read_ir, read_visible
from data.m3fd import load_m3fd
from fusion.fusers.fuse import (
    FUSION_PHASES,
    CheckpointError,
    CheckpointFuser,
    fuse_folder,
    load_fuser_checkpoint,
    main,
    unpickle_checkpoint,
)
from fusion.fusers.catalog import create_fuser
from fusion.training.train import PHASES, train
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic_root) -> Path:
    out = tmp_path_factory.mktemp("fuse_run")
    return train(tiny_config("phases=[{name: fuse, epochs: 1}]"), synthetic_root, out, progress=False).last_checkpoint


@pytest.fixture()
def pair_dirs(synthetic_root) -> tuple[Path, Path]:
    return synthetic_root / "Ir", synthetic_root / "Vis"


def test_fuse_luma_is_the_models_forward_on_infrared_then_visible_in_0_to_1(checkpoint, synthetic_root, tmp_path):
    """What the trainer optimised and validated is ``model(ir, vis)`` on [0, 1] tensors: fuse_luma must be that
    forward, scaled back to 0..255. The same checkpoint is rebuilt here independently of the fuser. One fusion
    epoch leaves the toy model nearly constant (about 128 whatever the inputs), so its weights are perturbed
    (seeded) first: the model then depends on its inputs, not symmetrically and not scale-free, so an
    infrared/visible swap or a wrong scale is seen."""
    from fusion.models.dae_fuse import DAEFuse, DAEFuseConfig

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for name, value in state["model"].items():
        if value.is_floating_point() and "running_" not in name:  # normalisation statistics stay valid
            value += 0.1 * torch.randn(value.shape, generator=generator)
    checkpoint = tmp_path / "perturbed.pt"
    torch.save(state, checkpoint)
    model = DAEFuse(DAEFuseConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    model.eval()
    pair = load_m3fd(synthetic_root).pairs("test")[0]
    ir = read_ir(pair.ir).astype(np.float32)
    vis, _ = read_visible(pair.vis)
    assert np.abs(ir - vis).mean() > 10  # the two inputs differ enough for a swap to show

    def forward(a: np.ndarray, b: np.ndarray, scale: float = 255.0) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.from_numpy(a / scale)[None, None], torch.from_numpy(b / scale)[None, None])
        return out[0, 0].float().numpy() * scale

    expected = forward(ir, vis)
    got = CheckpointFuser(checkpoint).fuse_luma(ir, vis)
    assert got.shape == ir.shape and got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert np.abs(got - forward(vis, ir)).max() > 1.0          # swapped inputs give another image
    assert np.abs(got - forward(ir, vis, scale=1.0)).max() > 1.0  # so do inputs left on the 0..255 scale
    assert 5 < got.mean() < 250  # on the 0..255 scale, not 0..1


def test_create_fuser_builds_the_generator_only(checkpoint, monkeypatch):
    def no_discriminators(*args, **kwargs):
        raise AssertionError("inference built the discriminators")

    monkeypatch.setattr(fusion.models.dae_fuse.PatchDiscriminator, "__init__", no_discriminators)
    fuser = create_fuser("dae_fuse", checkpoint=checkpoint)
    assert isinstance(fuser, CheckpointFuser) and fuser.name == "dae_fuse"
    assert not fuser.model.training


def test_cache_key_follows_the_checkpoint_bytes(checkpoint, tmp_path):
    key = load_fuser_checkpoint(checkpoint).cache_key()
    assert key == load_fuser_checkpoint(checkpoint).cache_key() and key.startswith("dae_fuse:")
    state = torch.load(checkpoint, weights_only=False)
    state["model"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, tmp_path / "other.pt")
    assert load_fuser_checkpoint(tmp_path / "other.pt").cache_key() != key


def test_cache_key_describes_the_weights_loaded(checkpoint, tmp_path):
    """The key is taken from the bytes the weights came from: rewriting the file after loading changes neither."""
    original = load_fuser_checkpoint(checkpoint).cache_key()
    copy = tmp_path / "model.pt"
    copy.write_bytes(checkpoint.read_bytes())
    fuser = load_fuser_checkpoint(copy)
    weights = {k: v.clone() for k, v in fuser.model.state_dict().items()}
    state = torch.load(checkpoint, weights_only=False)
    state["model"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, copy)
    assert fuser.cache_key() == original
    assert all(torch.equal(v, fuser.model.state_dict()[k]) for k, v in weights.items())


CODE_RAN: list[str] = []


def _record(what: str) -> str:
    CODE_RAN.append(what)
    return what


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return _record, ("unpickled",)


def test_checkpoint_is_loaded_without_running_its_code(checkpoint, tmp_path):
    """A checkpoint is unpickled with weights_only: the numpy RNG state it holds loads, any other object is refused
    with one CheckpointError and never runs (a detector's .pt would import its package)."""
    state = torch.load(checkpoint, weights_only=False)
    assert isinstance(state["rng"]["numpy"][1], np.ndarray)  # what the allowed numpy globals are for
    torch.save({**state, "extra": _RunsCodeWhenUnpickled()}, tmp_path / "code.pt")
    CODE_RAN.clear()
    with pytest.raises(CheckpointError, match=r"not a DAE-Fuse checkpoint: .*code.pt .*it needs .*_record"):
        load_fuser_checkpoint(tmp_path / "code.pt")
    assert not CODE_RAN


def test_numpy_state_saved_under_either_numpy_major_loads():
    """numpy 1 pickles arrays through numpy.core, numpy 2 through numpy._core: both names load."""
    buf = io.BytesIO()
    torch.save({"rng": np.random.get_state()}, buf)
    names = (b"numpy._core.multiarray", b"numpy.core.multiarray")
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as source:
        entries = {name: source.read(name) for name in source.namelist()}
    for written, other in (names, names[::-1]):
        renamed = io.BytesIO()
        with zipfile.ZipFile(renamed, "w") as archive:
            for name, data in entries.items():
                archive.writestr(name, data.replace(written, other) if name.endswith("data.pkl") else data)
        state = unpickle_checkpoint(renamed.getvalue(), Path("renamed.pt"))
        assert np.array_equal(state["rng"][1], np.random.get_state()[1])


def test_checkpoint_without_a_fusion_epoch_is_refused(tmp_path, synthetic_root, pair_dirs):
    """last.pt after phase 1 only has untrained fusion rules: refused unless the caller opts in."""
    last = train(tiny_config("phases=[{name: recon, epochs: 1}]"), synthetic_root, tmp_path / "run",
                 progress=False).last_checkpoint
    with pytest.raises(CheckpointError, match="never trained the fusion phase.*phases: recon.*allow_unfused"):
        load_fuser_checkpoint(last)
    assert load_fuser_checkpoint(last, allow_unfused=True).epoch == 1
    ir_dir, vis_dir = pair_dirs
    args = ["--checkpoint", str(last), "--ir", str(ir_dir), "--vis", str(vis_dir), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    assert main([*args, "--out", str(tmp_path / "opted_in"), "--allow-unfused"]) == 0
    # The fuser's list of fusion phases is the trainer's.
    assert set(FUSION_PHASES) == {name for name in PHASES.names() if PHASES.get(name).fuses}


def test_checkpoint_errors_are_clear(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_fuser_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_fuser_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": 1}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_fuser_checkpoint(tmp_path / "dict.pt")

    state = torch.load(checkpoint, weights_only=False)
    torch.save({**state, "architecture": "cddfuse"}, tmp_path / "other_arch.pt")
    with pytest.raises(CheckpointError, match="architecture 'cddfuse', expected 'dae_fuse'"):
        load_fuser_checkpoint(tmp_path / "other_arch.pt")
    torch.save({**state, "model_config": {**state["model_config"], "vit_dim": 32}}, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not match the DAE-Fuse architecture"):
        load_fuser_checkpoint(tmp_path / "mismatch.pt")


def test_fuse_folder_writes_every_pair_and_resumes(checkpoint, synthetic_root, tmp_path):
    pairs = load_m3fd(synthetic_root).pairs()
    fuser = load_fuser_checkpoint(checkpoint)
    (tmp_path / "out").mkdir()
    cv2.imwrite(str(tmp_path / "out" / f"{pairs[0].stem}.png"), np.zeros((4, 4), np.uint8))
    report = fuse_folder(fuser, pairs, tmp_path / "out", progress=False, skip_existing=True)
    assert report["skipped"] == [pairs[0].stem]
    assert report["written"] == [p.stem for p in pairs[1:]] and set(report["per_image"]) == set(report["written"])
    assert report["total_seconds"] >= sum(report["per_image"].values())
    report = fuse_folder(fuser, pairs, tmp_path / "out", progress=False)
    assert len(report["written"]) == len(pairs) and not report["skipped"]
    for pair in pairs:
        out = cv2.imread(str(tmp_path / "out" / f"{pair.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert out.dtype == np.uint8 and out.shape == (64, 80, 3)  # colour visible: its chroma is kept


def test_colour_is_the_visible_chroma(checkpoint, synthetic_root):
    """Only the luma is fused: the fused colour image differs from the visible one by the same amount in B, G, R."""
    from fusion.fusers.base import fuse_pair

    pair = load_m3fd(synthetic_root).pairs()[0]
    out = fuse_pair(load_fuser_checkpoint(checkpoint), pair).astype(np.float32)
    _, vis_bgr = read_visible(pair.vis)
    delta = out - vis_bgr.astype(np.float32)
    unclipped = (out > 0).all(axis=2) & (out < 255).all(axis=2)
    assert np.abs(delta[..., 0] - delta[..., 1])[unclipped].max() <= 1
    assert np.abs(delta[..., 1] - delta[..., 2])[unclipped].max() <= 1


def test_fuse_cli_checkpoint_and_baseline(checkpoint, pair_dirs, tmp_path, capsys):
    ir_dir, vis_dir = pair_dirs
    assert main(["--checkpoint", str(checkpoint), "--ir", str(ir_dir), "--vis", str(vis_dir), "--out",
                 str(tmp_path / "dae"), "--no-progress"]) == 0
    assert main(["--baseline", "max", "--ir", str(ir_dir), "--vis", str(vis_dir), "--out", str(tmp_path / "max"),
                 "--no-progress"]) == 0
    stems = sorted(p.stem for p in ir_dir.glob("*.png"))
    assert sorted(p.stem for p in (tmp_path / "dae").glob("*.png")) == stems
    stem = stems[0]
    ir = read_ir(ir_dir / f"{stem}.png").astype(np.float32)
    vis_y, vis_bgr = read_visible(vis_dir / f"{stem}.png")
    max_out = cv2.imread(str(tmp_path / "max" / f"{stem}.png"))
    expected = np.clip(np.round(vis_bgr + (np.maximum(ir, vis_y) - vis_y)[..., None]), 0, 255)
    assert np.abs(max_out.astype(np.float32) - expected).max() <= 1

    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--ir", str(ir_dir), "--vis", str(vis_dir), "--out",
                 str(tmp_path / "x")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_fuse_cli_refuses_to_overwrite_sources_or_mix_fusers(pair_dirs, tmp_path, capsys):
    import shutil

    ir_src, vis_src = pair_dirs
    ir_dir, vis_dir = tmp_path / "ir", tmp_path / "vis"
    shutil.copytree(ir_src, ir_dir)
    shutil.copytree(vis_src, vis_dir)
    before = {p.name: p.read_bytes() for p in ir_dir.iterdir()}
    common = ["--ir", str(ir_dir), "--vis", str(vis_dir), "--no-progress"]
    assert main(["--baseline", "mean", *common, "--out", str(ir_dir)]) == 2
    assert "would overwrite them" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in ir_dir.iterdir()} == before  # the sources are untouched
    assert main(["--baseline", "mean", "--ir", str(ir_dir), "--vis", str(ir_dir), "--out", str(tmp_path / "o")]) == 2
    assert "both the infrared and the visible role" in capsys.readouterr().err
    assert main(["--baseline", "max", *common, "--out", str(tmp_path / "o")]) == 0
    assert main(["--baseline", "mean", *common, "--out", str(tmp_path / "o"), "--skip-existing"]) == 2
    assert "another fuser (baseline:max:" in capsys.readouterr().err
    assert main(["--baseline", "max", *common, "--out", str(tmp_path / "o"), "--skip-existing"]) == 0  # same one


def test_dae_fuse_declares_its_two_roles_by_name_and_maps_them(checkpoint, synthetic_root):
    from fusion.fusers.base import FuserInputError, FuserSpecError, fuse_images, fuse_pair
    from data.io import restore_colour

    fuser = CheckpointFuser(checkpoint)
    assert fuser.modalities == ("ir", "vis")
    rng = np.random.default_rng(0)
    ir, vis = (rng.integers(0, 256, (48, 64)).astype(np.float32) for _ in range(2))
    direct = fuser.fuse_luma(ir, vis)
    assert np.array_equal(fuser.fuse({"vis": vis, "ir": ir}), direct)  # by name, whatever the order
    mapped = create_fuser("dae_fuse", checkpoint=checkpoint, roles={"ir": "lwir"})
    assert mapped.modalities == ("lwir", "vis")
    assert np.array_equal(mapped.fuse({"lwir": ir, "vis": vis}), direct)
    assert mapped.cache_key() == fuser.cache_key()  # the same weights make the same images
    with pytest.raises(FuserInputError) as err:
        fuse_images(fuser, {"vis": vis, "nir": ir, "lwir": ir})
    text = str(err.value)
    assert "fuses exactly {ir, vis}" in text and "missing ir" in text and "roles={ir: NAME, vis: NAME}" in text
    with pytest.raises(FuserInputError, match="roles mapped: ir=lwir"):
        fuse_images(mapped, {"ir": ir, "vis": vis})
    with pytest.raises(FuserSpecError, match="nir is no role of this model"):
        CheckpointFuser(checkpoint, roles={"nir": "x"})
    # What reaches the model from files is the rounded visible luma (the documented value domain).
    pair = load_m3fd(synthetic_root).pairs()[0]
    vis_y, vis_bgr = read_visible(pair.vis)
    expected = restore_colour(fuser.fuse_luma(read_ir(pair.ir).astype(np.float32), np.round(vis_y)), vis_bgr)
    assert np.array_equal(fuse_pair(fuser, pair), expected)


def test_fuse_cli_maps_dae_fuse_roles_to_named_sources(checkpoint, pair_dirs, tmp_path):
    ir_dir, vis_dir = pair_dirs
    assert main(["--checkpoint", str(checkpoint), "--ir", str(ir_dir), "--vis", str(vis_dir), "--out",
                 str(tmp_path / "positional"), "--no-progress"]) == 0
    assert main(["--fuser", "dae_fuse", f"checkpoint={checkpoint}", "roles={ir: lwir}", "--src", f"lwir={ir_dir}",
                 "--src", f"vis={vis_dir}", "--out", str(tmp_path / "named"), "--no-progress", "--device", "cpu"]) == 0
    for path in sorted((tmp_path / "positional").glob("*.png")):
        assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED),
                              cv2.imread(str(tmp_path / "named" / path.name), cv2.IMREAD_UNCHANGED)), path.name
