"""Fusion metrics for N named sources: values written out by hand on small piecewise-constant images, the
definitions checked against independent implementations, and the exact reduction to the two-source path."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import cv2
from scipy.signal import convolve2d

from data.errors import DatasetError
from data.io import read_gray_reference

from fusion.metrics import image as metrics
from fusion.metrics.image import (
    METRICS,
    DegenerateInputWarning,
    FusionSet,
    FusionTriple,
    evaluate,
    evaluate_source_folders,
    evaluate_sources,
    metric_terms,
)
from tests.test_metrics import _ssim_direct, _vif_direct, smooth_image

SIDE = 42  # the smallest even side VIF accepts (metrics.MIN_SIDE is 41): four 21 x 21 quadrants


def quadrants(tl: int, tr: int, bl: int, br: int) -> np.ndarray:
    """A 42 x 42 uint8 image made of four constant 21 x 21 quadrants."""
    h = SIDE // 2
    image = np.empty((SIDE, SIDE), np.uint8)
    image[:h, :h], image[:h, h:], image[h:, :h], image[h:, h:] = tl, tr, bl, br
    return image


# Three sources whose centred quadrant patterns are orthogonal: with u1 = (-1, 1, -1, 1), u2 = (-1, -1, 1, 1) and
# u3 = (-1, 1, 1, -1) over (TL, TR, BL, BR), A = 100 + 100 u1, B = 50 + 50 u2, C = 100 + 50 u3.
A = quadrants(0, 200, 0, 200)
B = quadrants(0, 0, 100, 100)
C = quadrants(50, 150, 150, 50)
# F = 128 + 40 u1 + 50 u2 + 25 u3
F = quadrants(13, 143, 163, 193)


def test_two_sources_by_name_are_the_two_source_path_exactly():
    ir, vis = smooth_image(1), smooth_image(2, sigma=1.0)
    fused = np.maximum(ir, vis)
    old = evaluate(fused, ir, vis)
    assert evaluate_sources(fused, {"ir": ir, "vis": vis}) == old
    assert evaluate_sources(fused, {"vis": vis, "ir": ir}) == old  # order and names change no value
    assert evaluate_sources(fused, {"lwir": ir, "rgb": vis}) == old
    assert metrics.score(FusionTriple.of(fused, ir, vis)) == old


def test_mutual_information_and_entropy_of_three_sources_by_hand():
    # F takes four distinct values, one per quadrant, so each source is a function of F: I(F; S) = H(S), and each
    # source takes two values on half the image each: H = ln 2 nats.
    values = evaluate_sources(F, {"a": A, "b": B, "c": C})
    assert values["MI"] == pytest.approx(3 * math.log(2), rel=1e-12)
    assert metric_terms(F, {"a": A, "b": B, "c": C})["MI"] == pytest.approx(
        {"a": math.log(2), "b": math.log(2), "c": math.log(2)}, rel=1e-12)
    assert values["EN"] == pytest.approx(2.0, rel=1e-12)  # four equally frequent levels: 2 bits
    # A constant fused image shares nothing with any source.
    assert evaluate_sources(np.full_like(F, 77), {"a": A, "b": B, "c": C})["MI"] == 0.0


def test_scd_of_three_sources_by_hand():
    # D_k = F - mean of the other two. Centred, in the orthogonal patterns (equal norms, so a correlation is a ratio
    # of coefficients): (B + C) / 2 = 25 u2 + 25 u3 + const, so D_A = 40 u1 + 25 u2 + 0 u3 and
    # corr(A, D_A) = 40 / sqrt(40^2 + 25^2).
    # (A + C) / 2 = 50 u1 + 25 u3 + const: D_B = -10 u1 + 50 u2 + 0 u3, corr(B, D_B) = 50 / sqrt(10^2 + 50^2).
    # (A + B) / 2 = 50 u1 + 25 u2 + const: D_C = -10 u1 + 25 u2 + 25 u3, corr(C, D_C) = 25 / sqrt(10^2 + 2 * 25^2).
    expected = {
        "a": 40 / math.sqrt(40**2 + 25**2),
        "b": 50 / math.sqrt(10**2 + 50**2),
        "c": 25 / math.sqrt(10**2 + 25**2 + 25**2),
    }
    sources = {"a": A, "b": B, "c": C}
    assert metric_terms(F, sources)["SCD"] == pytest.approx(expected, abs=1e-12)
    assert evaluate_sources(F, sources)["SCD"] == pytest.approx(sum(expected.values()), abs=1e-12)


def test_scd_undefined_term_counts_as_zero_for_three_sources():
    # F = mean of B and C (up to an offset) makes D_A constant: corr(A, D_A) is 0/0 and counts as 0, unwarned.
    fused = quadrants(25 + 100, 75 + 100, 125 + 100, 75 + 100)  # (B + C) / 2 + 100
    sources = {"a": A, "b": B, "c": C}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        terms = metric_terms(fused, sources)["SCD"]
    assert terms["a"] == 0.0
    # Centred: F = 25 u2 + 25 u3; D_B = F - (A + C)/2 = -50 u1 + 25 u2 + 0 u3 -> corr(B, D_B) = 25 / sqrt(50^2 + 25^2).
    assert terms["b"] == pytest.approx(25 / math.sqrt(50**2 + 25**2), abs=1e-12)


@pytest.mark.filterwarnings("ignore::fusion.metrics.image.DegenerateInputWarning")  # VIF's constant-source rule
def test_ssim_of_constant_images_by_hand():
    # Constant images: means x, y, no variance, so SSIM = (2 x y + C1) / (x^2 + y^2 + C1) with C1 = (0.01 * 2)^2.
    c1 = (0.01 * 2) ** 2
    fused = np.full((SIDE, SIDE), 100, np.uint8)
    sources = {name: np.full_like(fused, level) for name, level in (("same", 100), ("half", 50), ("black", 0))}
    expected = {"same": 1.0, "half": (2 * 100 * 50 + c1) / (100**2 + 50**2 + c1), "black": c1 / (100**2 + c1)}
    assert metric_terms(fused, sources)["SSIM"] == pytest.approx(expected, abs=1e-6)
    assert metrics.ssim(FusionSet.of(fused, sources)) == pytest.approx(sum(expected.values()), abs=1e-6)


def test_ssim_and_vif_of_three_sources_are_the_sums_of_independent_two_image_values():
    a, b, c = smooth_image(11, (48, 52)), smooth_image(12, (48, 52), sigma=1.0), smooth_image(13, (48, 52), 3.0)
    fused = np.round((a.astype(np.float64) + b + c) / 3)
    values = evaluate_sources(fused, {"a": a, "b": b, "c": c})
    assert values["VIF"] == pytest.approx(sum(_vif_direct(s, fused) for s in (a, b, c)), rel=1e-9)
    assert values["SSIM"] == pytest.approx(sum(_ssim_direct(fused, s) for s in (a, b, c)), abs=1e-5)


def test_vif_degenerate_and_identical_sources_by_hand():
    # VIFP(F, F) = 1 (up to the 1e-10 noise floor), an offset changes no local variance or covariance, and a
    # constant source's term is the reference's 1.0 with a warning: 1 + 1 + 1.
    fused = np.minimum(smooth_image(4, (44, 46)), 245)
    sources = {"same": fused, "offset": fused + 10, "flat": np.full_like(fused, 90)}
    with pytest.warns(DegenerateInputWarning, match="VIF"):
        terms = metric_terms(fused, sources)["VIF"]
    assert terms == pytest.approx({"same": 1.0, "offset": 1.0, "flat": 1.0}, abs=1e-9)


def _qabf_map_direct(source: np.ndarray, fused: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q^{SF} per pixel, source edge strength g_S) in float64 straight from METRICS.md: Sobel by 2-D convolution
    with zero padding, the equal-strength quirk, the two sigmoids."""
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    ky = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float64)

    def field(image):
        sx = convolve2d(image.astype(np.float64), kx, mode="same")
        sy = convolve2d(image.astype(np.float64), ky, mode="same")
        with np.errstate(divide="ignore", invalid="ignore"):
            angle = np.where(sx == 0, math.pi / 2, np.arctan(sy / sx))
        return np.hypot(sx, sy), angle

    gs, as_ = field(source)
    gf, af = field(fused)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(gs == gf, gf, np.minimum(gs, gf) / np.maximum(gs, gf))
    orientation = 1 - np.abs(as_ - af) / (math.pi / 2)
    qg = 0.9994 / (1 + np.exp(-15 * (relative - 0.5)))
    qa = 0.9879 / (1 + np.exp(-22 * (orientation - 0.8)))
    return qg * qa, gs


def test_qabf_of_three_sources_weights_each_source_by_its_own_edges():
    a, b, c = smooth_image(21, (46, 50)), smooth_image(22, (46, 50), sigma=1.0), smooth_image(23, (46, 50), 3.0)
    fused = np.maximum(np.maximum(a, b), c)
    parts = [_qabf_map_direct(s, fused) for s in (a, b, c)]
    weight = sum(g.sum() for _, g in parts)
    expected_terms = {name: (q * g).sum() / weight for name, (q, g) in zip("abc", parts)}
    sources = {"a": a, "b": b, "c": c}
    assert evaluate_sources(fused, sources)["Qabf"] == pytest.approx(sum(expected_terms.values()), abs=1e-5)
    assert metric_terms(fused, sources)["Qabf"] == pytest.approx(expected_terms, abs=1e-5)


@pytest.mark.filterwarnings("ignore::fusion.metrics.image.DegenerateInputWarning")  # the black sources' VIF terms
def test_a_source_without_edges_adds_nothing_to_qabf_and_none_at_all_gives_zero():
    a, b = smooth_image(31, (44, 44)), smooth_image(32, (44, 44), sigma=1.0)
    fused = np.maximum(a, b)
    black = np.zeros_like(a)  # the only image without Sobel edges under zero padding
    two = metrics.qabf(FusionSet.of(fused, {"a": a, "b": b}))
    assert metrics.qabf(FusionSet.of(fused, {"a": a, "b": b, "black": black})) == two
    with pytest.warns(DegenerateInputWarning, match="Qabf"):
        assert metrics.qabf(FusionSet.of(fused, {"x": black, "y": black, "z": black})) == 0.0
    assert metric_terms(fused, {"x": black, "y": black, "z": black})["Qabf"] == {"x": 0.0, "y": 0.0, "z": 0.0}


def test_terms_cover_the_comparative_metrics_in_source_order_and_add_up():
    a, b, c = smooth_image(41, (48, 48)), smooth_image(42, (48, 48), sigma=1.0), smooth_image(43, (48, 48), 3.0)
    fused = np.round((a.astype(np.float64) + b + c) / 3)
    t = FusionSet.of(fused, {"vis": a, "nir": b, "lwir": c})
    terms = metric_terms(t)
    assert list(terms) == ["MI", "SCD", "VIF", "Qabf", "SSIM"]
    values = metrics.score(t)
    for name, by_source in terms.items():
        assert list(by_source) == ["vis", "nir", "lwir"], name
        if name == "Qabf":  # shares of a float32 weighted sum: equal to float32 rounding
            assert sum(by_source.values()) == pytest.approx(values[name], abs=1e-6)
        else:
            assert sum(by_source.values()) == values[name], name
    assert list(values) == METRICS.names()


def test_bad_source_sets_are_one_clear_error():
    with pytest.raises(ValueError, match="at least two sources"):
        FusionSet.of(F, {"a": A})
    with pytest.raises(ValueError) as err:
        FusionSet.of(F, {"a": A, "b": B[:-1], "c": C[:, :-2]})
    assert "b (41, 42)" in str(err.value) and "c (42, 40)" in str(err.value) and "a (42, 42)" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Folders and CLI
# ---------------------------------------------------------------------------------------------------------------

def write_three_band(root, stems=("a", "b"), shape=(44, 48)):
    """vis (colour JPEG), nir and lwir (grey PNG) folders and a fused folder (the per-pixel max) under ``root``."""
    dirs = {name: root / name for name in ("vis", "nir", "lwir", "fused")}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems):
        vis, nir, lwir = (smooth_image(50 + 3 * i + k, shape, sigma=1.0 + k) for k in range(3))
        cv2.imwrite(str(dirs["vis"] / f"{stem}.jpg"), cv2.cvtColor(vis, cv2.COLOR_GRAY2BGR))
        cv2.imwrite(str(dirs["nir"] / f"{stem}.png"), nir)
        cv2.imwrite(str(dirs["lwir"] / f"{stem}.png"), lwir)
        cv2.imwrite(str(dirs["fused"] / f"{stem}.png"), np.maximum(np.maximum(vis, nir), lwir))
    return dirs


def test_three_source_folders_are_scored_against_every_source(tmp_path):
    dirs = write_three_band(tmp_path)
    sources = {name: dirs[name] for name in ("vis", "nir", "lwir")}
    per_image, mean, terms = evaluate_source_folders(dirs["fused"], sources, workers=2, terms=True)
    assert list(per_image) == ["a", "b"]
    read = {name: read_gray_reference(next(dirs[name].glob("a.*"))) for name in ("vis", "nir", "lwir")}
    fused = read_gray_reference(dirs["fused"] / "a.png")
    assert per_image["a"] == evaluate_sources(fused, read)
    assert terms["a"] == metric_terms(fused, read)
    assert mean["MI"] == pytest.approx((per_image["a"]["MI"] + per_image["b"]["MI"]) / 2)


def test_a_missing_and_a_mis_sized_source_are_one_error_before_scoring(tmp_path, monkeypatch):
    dirs = write_three_band(tmp_path, stems=("a", "b", "c"))
    (dirs["nir"] / "b.png").unlink()
    cv2.imwrite(str(dirs["lwir"] / "c.png"), smooth_image(9, (44, 40)))
    monkeypatch.setattr(metrics, "evaluate_files", lambda *a: pytest.fail("scored before the folders were checked"))
    with pytest.raises(DatasetError) as err:
        evaluate_source_folders(dirs["fused"], {name: dirs[name] for name in ("vis", "nir", "lwir")})
    text = str(err.value)
    assert "b.jpg has no partner in" in text and "(nir)" in text, text
    assert "size mismatch for 'c'" in text and "lwir/c.png is 40x44" in text, text
    assert "no fused image" not in text  # b has a fused image; its source set is what is incomplete


def test_cli_takes_named_sources_and_writes_their_terms(tmp_path):
    dirs = write_three_band(tmp_path)
    out = tmp_path / "m.json"
    code = metrics.main(["--fused", str(dirs["fused"]), "--src", f"vis={dirs['vis']}", "--src", f"nir={dirs['nir']}",
                         "--src", f"lwir={dirs['lwir']}", "--json", str(out), "--terms"])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["sources"] == ["vis", "nir", "lwir"] and doc["folders"]["nir"] == str(dirs["nir"])
    assert list(doc["per_image_terms"]["a"]["VIF"]) == ["vis", "nir", "lwir"]
    assert sum(doc["per_image_terms"]["a"]["MI"].values()) == pytest.approx(doc["per_image"]["a"]["MI"], rel=1e-12)


def test_cli_mixes_the_two_source_flags_with_named_ones_and_refuses_bad_specs(tmp_path, capsys):
    dirs = write_three_band(tmp_path)
    code = metrics.main(["--fused", str(dirs["fused"]), "--ir", str(dirs["lwir"]), "--vis", str(dirs["vis"]),
                         "--src", f"nir={dirs['nir']}"])
    assert code == 0 and capsys.readouterr().out.splitlines()[1].startswith("a ")
    with pytest.raises(SystemExit) as exit_info:
        metrics.main(["--fused", str(dirs["fused"]), "--src", "vis", "--src", f"nir={dirs['nir']}",
                      "--src", f"nir={dirs['lwir']}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'vis' is not NAME=DIR" in err and "--src nir is given twice" in err
    with pytest.raises(SystemExit):
        metrics.main(["--fused", str(dirs["fused"]), "--src", f"vis={dirs['vis']}"])
    assert "at least two sources" in capsys.readouterr().err
