"""DAE-Fuse with N modalities (issue 20): the two-band release unchanged bit for bit, three-band training steps
(gradients reach every branch and every discriminator), any subset of the modalities (a missing or blinded band),
modality dropout, the warm start from the two-band weights, the N-source fusion loss and the config checks."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data.synthetic import generate_synthetic_m3fd
from fusion.models.checkpoint import build_generator, load_checkpoint, read_generator_checkpoint
from fusion.training.config import ConfigError, load_train_config, replace_config
from fusion.models.dae_fuse import (
    DAEFuseConfig,
    GatedSkipFusion,
    CrossAttention,
    build_discriminators,
    create_model,
    expand_modalities,
)
from fusion.training.data import MultiModalCropDataset, resolve_multimodal_roots
from fusion.training.losses import GAN_LOSSES, FusionLoss, ReconstructionLoss, discriminator_loss
from fusion.training.train import PHASES, Losses, Trainer

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "fusion" / "weights" / "dae_fuse_release.pt"
# Outputs of the released checkpoint on a fixed input, written by the model code before it learned N modalities
# (fusion/dae_fuse.py at 2274ae5, torch 1 thread, this repository's CPU build): model, inference copy, reconstructions.
REFERENCE = Path(__file__).resolve().parent / "nmodal_release_reference.npz"
TRI = ("vis", "nir", "lwir")


class NullWriter:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference was computed with one thread (the summation order)
    yield
    torch.set_num_threads(previous)


def tiny3(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("dae_fuse_t", modalities=TRI, **overrides)


def rand_sources(n: int, b: int = 2, h: int = 32, w: int = 48, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 1, h, w, generator=g) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- N = 2 is the release
def test_release_fuses_and_reconstructs_bit_for_bit_as_before(one_thread):
    ref = np.load(REFERENCE)
    _, state = read_generator_checkpoint(RELEASE)
    assert "modalities" not in state["model_config"]  # saved before the field: the default two bands
    model = build_generator(state, RELEASE).eval()
    assert model.modalities == ("ir", "vis")
    from fusion.models.inference import for_inference

    ir, vis = torch.from_numpy(ref["ir"]), torch.from_numpy(ref["vis"])
    with torch.inference_mode():
        assert torch.equal(model(ir, vis), torch.from_numpy(ref["fused"]))
        assert torch.equal(for_inference(model)(ir, vis), torch.from_numpy(ref["fused_inference"]))
        ir_hat, vis_hat = model.reconstruct(ir, vis)
    assert torch.equal(ir_hat, torch.from_numpy(ref["ir_hat"])) and torch.equal(vis_hat, torch.from_numpy(ref["vis_hat"]))


def test_two_modalities_keep_the_release_parameter_names_and_shapes():
    _, state = load_checkpoint(RELEASE)
    fresh = create_model("dae_fuse_s").state_dict()
    assert {k: tuple(v.shape) for k, v in fresh.items()} == {k: tuple(v.shape) for k, v in state["model"].items()}
    assert "fusion.ir_from_vis.attn.q.weight" in fresh and "fusion.vis_from_ir.attn.q.weight" in fresh


# ------------------------------------------------------------------------------------------------- the N-modal model
def test_three_modalities_build_per_modality_rules_and_share_the_encoder():
    model = tiny3()
    two = create_model("dae_fuse_t")
    names = dict(model.named_children())
    assert model.fusion.block_names == ("vis_from_nir_lwir", "nir_from_vis_lwir", "lwir_from_vis_nir")
    # shared encoder and decoder: exactly the two-band model's parameters, whatever N
    for part in ("encoder", "decoder"):
        assert sum(p.numel() for p in names[part].parameters()) == sum(p.numel() for p in getattr(two, part).parameters())
    assert model.fusion.merge.in_features == 3 * model.cfg.embed_dim
    assert all(g.gate.out_channels == 3 * g.gate.in_channels // 3 for g in model.skip_fusion)
    with torch.no_grad():
        out = model(*rand_sources(3))
    assert out.shape == (2, 1, 32, 48) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert [r.shape for r in model.reconstruct(*rand_sources(3))] == [(2, 1, 32, 48)] * 3


def test_bad_sources_are_one_clear_error():
    model = tiny3()
    with pytest.raises(ValueError, match="fuses 3 modalities"):
        model(*rand_sources(2))
    a, b, c = rand_sources(3)
    with pytest.raises(ValueError, match="source shapes differ: vis .* nir .* lwir"):
        model(a, b[..., :16], c)
    with pytest.raises(ValueError, match="at least two present"):
        model(a, b, c, present=torch.tensor([[True, False, False], [True, True, True]]))
    with pytest.raises(ValueError, match="bool mask"):
        model(a, b, c, present=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least two distinct"):
        DAEFuseConfig(modalities=("vis", "vis"))
    with pytest.raises(ValueError, match="without '_'"):
        DAEFuseConfig(modalities=("vis", "near_ir"))


def test_a_missing_band_does_not_reach_the_output_and_gets_no_weight():
    model = tiny3().eval()
    vis, nir, lwir = rand_sources(3, seed=1)
    present = torch.tensor([[True, False, True], [True, True, True]])
    with torch.no_grad():
        base = model(vis, nir, lwir, present=present)
        blinded = nir.clone()
        blinded[0] = float("nan")  # whatever the failed camera delivered, NaN included
        assert torch.equal(model(vis, blinded, lwir, present=present), base)
        # the complete sample is unaffected by its neighbour's mask, and all-present equals no mask
        assert torch.allclose(base[1:], model(vis, nir, lwir)[1:], atol=1e-6)
        assert torch.allclose(model(vis, nir, lwir, present=torch.ones(2, 3, dtype=torch.bool)),
                              model(vis, nir, lwir), atol=1e-6)
    gate = GatedSkipFusion(4, 3)
    torch.nn.init.normal_(gate.gate.weight)
    xs = [torch.rand(2, 4, 8, 8) for _ in range(3)]
    mask = torch.tensor([[True, False, True], [True, True, True]])
    with torch.no_grad():
        out = gate(*xs, present=mask)
        logits = gate.gate(torch.cat(xs, 1)).view(2, 3, 4, 8, 8)
    w = torch.softmax(logits[0, [0, 2]], dim=0)  # the softmax over the present two only
    assert torch.allclose(out[0], w[0] * xs[0][0] + w[1] * xs[2][0], atol=1e-6)
    w_all = torch.softmax(logits[1], dim=0)
    assert torch.allclose(out[1], sum(w_all[i] * xs[i][1] for i in range(3)), atol=1e-6)


def test_cross_attention_mask_all_true_is_no_mask_and_masked_keys_are_ignored():
    torch.manual_seed(0)
    attn = CrossAttention(16, 2).eval()
    x, ctx = torch.rand(2, 5, 16), torch.rand(2, 8, 16)
    mask = torch.ones(2, 8, dtype=torch.bool)
    assert torch.allclose(attn(x, ctx), attn(x, ctx, mask), atol=1e-6)
    mask[:, 4:] = False
    other = ctx.clone()
    other[:, 4:] = 50.0
    assert torch.allclose(attn(x, ctx, mask), attn(x, other, mask), atol=1e-6)
    assert torch.allclose(attn(x, ctx, mask), attn(x, ctx[:, :4]), atol=1e-6)


# -------------------------------------------------------------------------------------------------- training steps
@pytest.mark.parametrize("phase", ["recon", "fuse"])
def test_three_band_step_reaches_every_branch_and_every_discriminator(phase):
    model = tiny3()
    cfg = load_train_config(preset="tiny", overrides=["model.args={modalities: [vis, nir, lwir]}",
                                                      "loss.recon_grad_targets=[vis, nir, lwir]"])
    losses = Losses(cfg)
    discs = build_discriminators(channels=4, modalities=TRI)
    gan = GAN_LOSSES.get("lsgan")
    sources = rand_sources(3, b=2, h=32, w=32)
    present = torch.tensor([[True, False, True], [True, True, True]])  # one sample without near-infrared
    content, fakes = PHASES.get(phase).generate(model, losses, *sources, present=present)
    assert set(fakes) == set(TRI)
    if phase == "recon":
        assert {"vis_ssim", "nir_ssim", "lwir_ssim", "nir_grad"} <= set(content)
    adv = sum(gan(discs[m](fakes[m][present[:, i]]), True) for i, m in enumerate(TRI))
    (content["total"] + 0.1 * adv).backward()
    trained = model.phase_parameters(phase)
    missing = [n for n, p in model.named_parameters() if any(p is q for q in trained) and p.grad is None]
    assert not missing, missing
    if phase == "fuse":
        for name in model.fusion.block_names:  # every modality's attention block, queries and keys
            block = getattr(model.fusion, name)
            assert float(block.attn.q.weight.grad.abs().sum()) > 0 and float(block.attn.kv.weight.grad.abs().sum()) > 0
    for m in TRI:
        d_loss = discriminator_loss(gan, discs[m](sources[TRI.index(m)]), discs[m](fakes[m].detach()))
        grads = torch.autograd.grad(d_loss, list(discs[m].parameters()))
        assert all(float(g.abs().sum()) > 0 for g in grads), m


def test_fusion_loss_over_n_sources():
    loss = FusionLoss(1.0, 10.0)
    a, b, c, fused = rand_sources(4, seed=3)
    two = loss(a, b, fused)
    assert all(torch.equal(two[k], loss.n_sources([a, b], fused)[k]) for k in two)
    with_zero = loss.n_sources([a, b, torch.zeros_like(c)], fused)  # a missing (zeroed) band changes nothing
    assert all(torch.equal(two[k], with_zero[k]) for k in two)
    three = loss.n_sources([a, b, c], fused)
    hand = torch.nn.functional.l1_loss(fused, torch.maximum(torch.maximum(a, b), c))
    assert torch.allclose(three["intensity"], hand)
    rec = ReconstructionLoss(1.0, 1.0, 1.0, grad_targets=TRI)
    real = dict(zip(TRI, (a, b, c)))
    terms = rec(real, dict(zip(TRI, (a, b + 0.5, c))), torch.tensor([[True, False, True], [True, False, True]]))
    assert not any(k.startswith("nir_") for k in terms) and float(terms["total"]) == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------------------------ warm start from two bands
def test_expanded_release_keeps_the_shared_weights_and_reproduces_the_gates():
    _, state = read_generator_checkpoint(RELEASE)
    release = build_generator(state, RELEASE).eval()
    cfg3 = dataclasses.replace(release.cfg, modalities=TRI)
    tri = expand_modalities(release, cfg3, {"vis": "vis", "nir": "vis", "lwir": "ir"}).eval()
    ours, theirs = tri.state_dict(), release.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in theirs.items() if k.startswith(("encoder.", "decoder.")))
    assert torch.equal(ours["fusion.lwir_from_vis_nir.attn.q.weight"], theirs["fusion.ir_from_vis.attn.q.weight"])
    ir_f, vis_f = (torch.rand(1, c, 8, 8) for c in (8, 8))
    with torch.no_grad():
        # nir as a second visible: the expanded gate is the release's gate
        assert torch.allclose(tri.skip_fusion[0](vis_f, vis_f, ir_f), release.skip_fusion[0](ir_f, vis_f), atol=1e-6)
        ir, vis = rand_sources(2, b=1, h=48, w=64, seed=4)
        gap = (tri(vis, vis, ir) - release(ir, vis)).abs().max()
    assert float(gap) < 0.02  # the attention also sees vis twice, so close, not equal
    with pytest.raises(ValueError, match="must send each"):
        expand_modalities(release, cfg3, {"vis": "vis", "nir": "thermal", "lwir": "ir"})


# ----------------------------------------------------------------------------------- data: dropout, missing bands
@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("tri")
    three = generate_synthetic_m3fd(base / "syn", num_scenes=3, frames_per_scene=2, size=(96, 64), seed=2, nir=True)
    two = base / "pairs"
    (two / "ir").mkdir(parents=True)
    (two / "vi").mkdir()
    for p in sorted((three / "Ir").iterdir())[:3]:
        shutil.copy(p, two / "ir" / f"p{p.name}")
        shutil.copy(three / "Vis" / p.name, two / "vi" / f"p{p.name}")
    return [three, two]


def test_two_band_roots_join_with_nir_missing_and_dropout_leaves_two(roots):
    cfg = load_train_config(preset="triband").data
    train, val = resolve_multimodal_roots(roots, TRI, cfg)
    assert {tuple(sorted(s.paths)) for s in train} == {("lwir", "nir", "vis"), ("lwir", "vis")}
    ds = MultiModalCropDataset(train, TRI, 32, modality_dropout=0.0)
    pairs = [ds[i] for i in range(len(ds)) if "nir" not in train[i].paths.keys()]
    assert pairs and all(item["present"].tolist() == [True, False, True] and float(item["nir"].abs().max()) == 0
                         for item in pairs)
    drop = MultiModalCropDataset(train, TRI, 32, modality_dropout=1.0)
    items = [drop[i] for i in range(len(drop))]
    assert all(int(item["present"].sum()) == 2 for item in items)  # never below two
    dropped = [TRI[int(np.flatnonzero(~item["present"].numpy())[0])] for item in items]
    assert len(set(dropped)) >= 2  # not always the same band
    again = MultiModalCropDataset(train, TRI, 32, modality_dropout=1.0)
    assert all(torch.equal(again[i]["present"], items[i]["present"]) for i in range(len(items)))  # (seed, epoch, i)


def test_three_band_training_run_every_discriminator_steps_and_resumes(roots, tmp_path):
    cfg = load_train_config(preset="triband", overrides=[
        "model.name=dae_fuse_t", "data.crop_size=32", "data.batch_size=4", "max_minutes=null",
        "data.cache_images=false", "phases=[{name: recon, epochs: 1}, {name: fuse, epochs: 1}]"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=None, init_map={}))
    trainer = Trainer(cfg, roots, tmp_path / "run", progress=False, tb_writer=NullWriter())
    assert set(trainer.discriminators) == set(TRI) and {"d_vis", "d_nir", "d_lwir"} <= set(trainer.optimizers)
    before = {m: [p.detach().clone() for p in d.parameters()] for m, d in trainer.discriminators.items()}
    batch = next(iter(trainer.loader))
    values = trainer.train_step(batch, "fuse")
    assert {"g_adv_vis", "g_adv_nir", "g_adv_lwir", "d_vis", "d_nir", "d_lwir"} <= set(values)
    for m, d in trainer.discriminators.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[m], d.parameters())), m
    result = trainer.fit()
    _, state = read_generator_checkpoint(result.last_checkpoint)
    assert tuple(state["model_config"]["modalities"]) == TRI
    assert build_generator(state, result.last_checkpoint).modalities == TRI
    resumed = Trainer(cfg, roots, tmp_path / "run", resume=True, progress=False, tb_writer=NullWriter())
    assert resumed.start_epoch == 2


def test_config_checks_name_the_modalities():
    with pytest.raises(ConfigError, match="init_map needs model.init"):
        load_train_config(preset="triband", overrides=["model.init=null"])
    cfg = load_train_config(preset="triband")
    with pytest.raises(ConfigError, match="recon_grad_targets: \\['ir'\\]"):
        replace_config(cfg, "loss.recon_grad_targets=[ir]")
    with pytest.raises(ConfigError, match="modality_dirs: 'swir'"):
        replace_config(cfg, "data.modality_dirs={swir: [S]}")
    with pytest.raises(ConfigError, match="must map each of"):
        replace_config(cfg, "model.init_map={swir: vis}")
