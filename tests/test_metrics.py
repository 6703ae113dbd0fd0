"""Fusion metrics: the reference vectors, degenerate inputs, input types, registry, folder evaluation and CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
from scipy.signal import convolve2d

from data.errors import DatasetError
from data.io import luma, read_gray_reference
from fusion.metrics import image as metrics
from fusion.metrics.image import (
    METRICS,
    DegenerateInputWarning,
    FusionTriple,
    GreyImage,
    evaluate,
    evaluate_folders,
    evaluate_many,
)
from tests.conftest import REPO_ROOT, shared_path

NAMES = ["EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM"]
# The issue asks for 1e-3 relative or 1e-4 absolute; the implementation reaches the float32 level of the reference
# (METRICS.md: about 1e-5), so the test holds it to that, which implies the tolerance.
ABS_TOL = 1e-5


def smooth_image(seed: int, shape: tuple[int, int] = (64, 72), sigma: float = 2.0) -> np.ndarray:
    """A deterministic uint8 test image with structure at several scales."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, shape).astype(np.float32)
    image = 0.7 * cv2.GaussianBlur(noise, (0, 0), sigma) + 0.3 * noise
    image = (image - image.min()) / (image.max() - image.min()) * 255
    return np.round(image).astype(np.uint8)


@pytest.fixture(scope="module")
def triple() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ir, vis = smooth_image(1), smooth_image(2, sigma=1.0)
    fused = np.maximum(ir, vis)
    return fused, ir, vis


# ---------------------------------------------------------------------------------------------------------------
# Reference vectors
# ---------------------------------------------------------------------------------------------------------------

def test_reference_vectors_match_every_case_and_metric():
    reference = json.loads(shared_path("metric_reference.json").read_text())
    root = shared_path()
    mismatches, undefined = [], []
    for case in reference["cases"]:
        images = [read_gray_reference(root / case[key]) for key in ("fused", "ir", "vis")]
        got = evaluate(*images)
        assert list(got) == NAMES
        for name, want in case["metrics"].items():
            assert math.isfinite(got[name]), f"{case['name']} {name} is not finite"
            if want is None:  # the reference's NaN (SCD with fused == a source): checked in the degenerate tests
                undefined.append((case["name"], name))
            elif abs(got[name] - want) > ABS_TOL:
                mismatches.append(f"{case['name']} {name}: got {got[name]!r}, reference {want!r}")
    assert not mismatches, "\n".join(mismatches)
    assert undefined == [("tno_07_fused_eq_ir", "SCD"), ("tno_07_fused_eq_vis", "SCD")]


def test_reference_degenerate_scd_follows_the_documented_rule():
    reference = json.loads(shared_path("metric_reference.json").read_text())
    root = shared_path()
    for case in reference["cases"]:
        if case["metrics"]["SCD"] is not None:
            continue
        fused, ir, vis = (read_gray_reference(root / case[key]) for key in ("fused", "ir", "vis"))
        source, other = (ir, vis) if np.array_equal(fused, ir) else (vis, ir)
        expected = np.corrcoef(source.ravel(), (source - other).ravel())[0, 1]  # the undefined term counts as 0
        assert evaluate(fused, ir, vis)["SCD"] == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# Independent checks that need no shared data
# ---------------------------------------------------------------------------------------------------------------

def _vif_direct(ref: np.ndarray, dist: np.ndarray) -> float:
    """VIFP written straight from METRICS.md with 2-D 'valid' convolutions (slow, for checking only)."""
    ref, dist = ref.astype(np.float64), dist.astype(np.float64)
    num = den = 0.0
    for s in range(1, 5):
        n = 2 ** (5 - s) + 1
        m = (n - 1) / 2
        y, x = np.ogrid[-m:m + 1, -m:m + 1]
        win = np.exp(-(x * x + y * y) / (2 * (n / 5) ** 2))
        win /= win.sum()
        if s > 1:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, win, mode="valid"), convolve2d(dist, win, mode="valid")
        s1 = np.maximum(convolve2d(ref * ref, win, mode="valid") - mu1 ** 2, 0)
        s2 = np.maximum(convolve2d(dist * dist, win, mode="valid") - mu2 ** 2, 0)
        c = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        g = c / (s1 + 1e-10)
        sv = s2 - g * c
        g[s1 < 1e-10], sv[s1 < 1e-10], s1[s1 < 1e-10] = 0, s2[s1 < 1e-10], 0
        g[s2 < 1e-10], sv[s2 < 1e-10] = 0, 0
        sv[g < 0], g[g < 0] = s2[g < 0], 0
        sv[sv <= 1e-10] = 1e-10
        num += np.sum(np.log10(1 + g * g * s1 / (sv + 2)))
        den += np.sum(np.log10(1 + s1 / 2))
    return num / den


def test_vif_matches_a_direct_two_dimensional_implementation(triple):
    fused, ir, vis = triple
    expected = _vif_direct(ir, fused) + _vif_direct(vis, fused)
    assert evaluate(fused, ir, vis)["VIF"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("shape", [(41, 41), (41, 90), (97, 41)])
def test_vif_matches_the_direct_implementation_at_the_smallest_sizes(shape):
    rng = np.random.default_rng(sum(shape))
    ir = cv2.GaussianBlur(rng.integers(0, 256, shape).astype(np.float32), (0, 0), 2)
    vis = rng.integers(0, 256, shape).astype(np.float32)
    ir, vis = np.round(ir), np.round(vis)
    fused = np.round((ir + vis) / 2)
    expected = _vif_direct(ir, fused) + _vif_direct(vis, fused)
    assert evaluate(fused, ir, vis)["VIF"] == pytest.approx(expected, rel=1e-9)


def test_vif_window_is_the_separable_factor_of_matlab_fspecial():
    for size in (17, 9, 5, 3):
        m = (size - 1) / 2
        y, x = np.ogrid[-m:m + 1, -m:m + 1]
        h = np.exp(-(x * x + y * y) / (2 * (size / 5) ** 2))
        assert (h >= np.finfo(float).eps * h.max()).all()  # the reference's cut-off removes nothing
        g = metrics.vif_window(size)
        np.testing.assert_allclose(np.outer(g, g), h / h.sum(), rtol=1e-13, atol=0)


def _ssim_direct(x: np.ndarray, y: np.ndarray, data_range: float = 2.0, crop: int = 3) -> float:
    """scikit-image 0.19's ``structural_similarity(x, y, data_range=...)`` written out in float64 (Wang et al. 2004
    with its defaults: 7x7 uniform window, reflected borders, K1 0.01, K2 0.03, sample covariance, the map's mean
    without its 3-pixel border): an implementation independent of fusion.metrics.image's float32 one."""
    from scipy.ndimage import uniform_filter

    x, y = x.astype(np.float64), y.astype(np.float64)
    win, np_ = 7, 49
    mean = lambda a: uniform_filter(a, size=win, mode="reflect")
    ux, uy = mean(x), mean(y)
    cov_norm = np_ / (np_ - 1)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s[crop:s.shape[0] - crop, crop:s.shape[1] - crop].mean())


def test_ssim_matches_a_direct_implementation_with_data_range_2(triple):
    """SSIM summed over both sources, each as scikit-image 0.19 computes it on the reference's float32 input
    (data_range 2, the float dtype's range): checked against the direct float64 formula (float32 rounding of the
    implementation stays below 1e-5), and the choices that matter change the value (a 0..255 data range, no
    border crop), so the comparison can tell them apart."""
    fused, ir, vis = triple
    expected = sum(_ssim_direct(fused, s) for s in (ir, vis))
    got = evaluate(fused, ir, vis)["SSIM"]
    assert got == pytest.approx(expected, abs=1e-5)
    assert 0 < got < 2
    assert abs(sum(_ssim_direct(fused, s, data_range=255) for s in (ir, vis)) - got) > 1e-2
    assert abs(sum(_ssim_direct(fused, s, crop=0) for s in (ir, vis)) - got) > 1e-4


def test_mutual_information_and_entropy_match_their_definitions(triple):
    fused, ir, vis = triple

    def entropy(counts):
        p = counts[counts > 0] / counts.sum()
        return -(p * np.log(p)).sum()

    expected_mi = 0.0
    for source in (ir, vis):
        joint = np.histogram2d(fused.ravel(), source.ravel(), bins=256, range=[[0, 256], [0, 256]])[0]
        expected_mi += entropy(joint.sum(1)) + entropy(joint.sum(0)) - entropy(joint)  # nats
    values = evaluate(fused, ir, vis)
    assert values["MI"] == pytest.approx(expected_mi, rel=1e-12)
    assert values["EN"] == pytest.approx(entropy(np.bincount(fused.ravel())) / math.log(2), rel=1e-12)
    assert values["SD"] == pytest.approx(np.std(fused.astype(np.float64)), rel=1e-12)


def test_sobel_angle_lookup_equals_arctan_on_every_integer_pair():
    k = np.arange(-1020, 1021, dtype=np.float32)
    sy, sx = (a.ravel() for a in np.meshgrid(k, k, indexing="ij"))
    expected = np.full_like(sx, np.float32(math.pi / 2))
    nonzero = sx != 0
    expected[nonzero] = np.arctan(sy[nonzero] / sx[nonzero])
    np.testing.assert_array_equal(metrics._sobel_angle(sx, sy), expected)


# ---------------------------------------------------------------------------------------------------------------
# Degenerate inputs
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [0, 7])
def test_scd_with_fused_equal_to_a_source_counts_the_undefined_term_as_zero(triple, offset):
    _, ir, vis = triple
    ir = np.minimum(ir, 255 - offset)
    fused = ir + offset  # F - A is constant: corr(B, F - A) is 0/0
    a, b = ir.astype(np.float64).ravel(), vis.astype(np.float64).ravel()
    expected = np.corrcoef(a, fused.astype(np.float64).ravel() - b)[0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the SCD rule is documented, not warned about
        assert evaluate(fused, ir, vis)["SCD"] == pytest.approx(expected, abs=1e-12)
    assert evaluate(vis, ir, vis)["SCD"] == pytest.approx(np.corrcoef(b, b - a)[0, 1], abs=1e-12)


def test_constant_fused_image_gives_defined_values(triple):
    _, ir, vis = triple
    values = evaluate(np.full_like(ir, 128), ir, vis)
    assert all(math.isfinite(v) for v in values.values())
    for name in ("EN", "SD", "SF", "AG", "MI", "VIF"):
        assert values[name] == 0.0, name
    assert math.copysign(1.0, values["EN"]) == 1.0  # 0.0, not the reference's -0.0
    assert abs(values["SSIM"]) < 0.05
    # F constant: corr(A, F - B) = corr(A, -B) and corr(B, F - A) = corr(B, -A), so SCD = -2 corr(A, B).
    a, b = ir.astype(np.float64).ravel(), vis.astype(np.float64).ravel()
    assert values["SCD"] == pytest.approx(-2 * np.corrcoef(a, b)[0, 1], abs=1e-12)


def test_constant_source_vif_term_is_one_with_a_warning(triple):
    fused, _, vis = triple
    flat = np.full_like(vis, 90)
    with pytest.warns(DegenerateInputWarning, match="VIF"):
        value = evaluate(fused, flat, vis)["VIF"]
    # The other term is VIFP(vis, F): half of VIF(F, vis, vis), whose two terms are both VIFP(vis, F).
    assert value == pytest.approx(1.0 + evaluate(fused, vis, vis)["VIF"] / 2, rel=1e-12)


def test_vif_tiles_change_speed_not_values(triple, monkeypatch):
    expected = evaluate(*triple)["VIF"]
    # Odd tile sizes put tile edges everywhere, at every scale (the last tiles are partial).
    monkeypatch.setattr(metrics, "VIF_TILE_ROWS", 7)
    monkeypatch.setattr(metrics, "VIF_TILE_COLS", 13)
    assert evaluate(*triple)["VIF"] == pytest.approx(expected, rel=1e-12)


def test_qabf_without_any_source_edge_is_zero_with_a_warning(triple):
    fused = triple[0]
    black = np.zeros_like(fused)  # with the reference's zero padding any other constant image has border edges
    assert metrics.qabf(FusionTriple.of(fused, np.full_like(fused, 30), black)) > 0
    with pytest.warns(DegenerateInputWarning, match="Qabf"):
        assert metrics.qabf(FusionTriple.of(fused, black, black)) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Input types and validation
# ---------------------------------------------------------------------------------------------------------------

def test_float_inputs_are_rounded_in_their_own_precision_and_a_0_to_1_scale_is_flagged():
    image = np.array([[255.49999999, 3.4999999, 1.49999999, 2.5]])  # float32 would round these up
    np.testing.assert_array_equal(metrics.to_reference_gray(image), [[255, 3, 1, 2]])
    with pytest.warns(metrics.ScaleWarning, match="0..1"):
        metrics.to_reference_gray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.to_reference_gray(np.zeros((3, 4), np.float32))  # all black: nothing to flag
        metrics.to_reference_gray(np.ones((3, 4), np.uint8))  # integers carry no scale doubt


def test_overlapping_single_threaded_opencv_sections_restore_the_thread_count():
    section = metrics._SingleThreadedOpenCV()
    previous = cv2.getNumThreads()
    try:
        cv2.setNumThreads(3)
        with section:  # e.g. two evaluate_many calls on two threads, overlapping
            with section:
                assert cv2.getNumThreads() == 1
            assert cv2.getNumThreads() == 1  # the other user is still inside
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(previous)


def test_uint8_float_and_prepared_inputs_agree(triple):
    fused, ir, vis = triple
    expected = evaluate(fused, ir, vis)
    assert evaluate(*(a.astype(np.float32) for a in triple)) == expected
    assert evaluate(*(a.astype(np.float64) + 0.2 for a in triple)) == expected  # floats are rounded
    assert evaluate(fused, GreyImage(ir), GreyImage(vis)) == expected


def test_colour_input_is_scored_on_its_rounded_luma_like_the_reader(tmp_path, triple):
    fused, ir, vis = triple
    rng = np.random.default_rng(3)
    colour = np.clip(fused[..., None].astype(np.int16) + rng.integers(-40, 40, (*fused.shape, 3)), 0, 255)
    colour = colour.astype(np.uint8)
    expected = evaluate(np.round(luma(colour)), ir, vis)
    assert evaluate(colour, ir, vis) == expected
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    assert evaluate(read_gray_reference(tmp_path / "colour.png"), ir, vis) == expected
    grey_as_bgr = np.repeat(fused[..., None], 3, axis=2)
    assert evaluate(grey_as_bgr, ir, vis) == evaluate(fused, ir, vis)


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda a: a.astype(np.float32) - 200, "within 0..255"),
        (lambda a: a.astype(np.float32) * 1.5, "within 0..255"),
        (lambda a: np.where(a > 100, np.nan, a.astype(np.float32)), "finite"),
        (lambda a: np.dstack([a] * 4), "grey"),
        (lambda a: a[:, :-1], "differ in size"),
        (lambda a: a[:40], "differ in size"),
    ],
)
def test_bad_inputs_are_rejected(triple, bad, message):
    fused, ir, vis = triple
    with pytest.raises(ValueError, match=message):
        evaluate(bad(fused), ir, vis)


def test_images_smaller_than_vif_needs_are_rejected(triple):
    small = [a[:40, :40] for a in triple]
    with pytest.raises(ValueError, match="at least 41"):
        evaluate(*small)
    assert all(math.isfinite(v) for v in evaluate(*(a[:41, :41] for a in triple)).values())


# ---------------------------------------------------------------------------------------------------------------
# Registry and batch
# ---------------------------------------------------------------------------------------------------------------

def test_registry_order_keys_and_documentation(triple):
    assert METRICS.names() == NAMES == metrics.metric_names()
    assert list(evaluate(*triple)) == NAMES
    conventions = metrics.conventions()
    assert list(conventions) == NAMES
    assert all(text.startswith(name + ":") for name, text in conventions.items())
    assert "nats" in conventions["MI"] and "bits" in conventions["EN"] and "summed" in conventions["VIF"]


def test_evaluate_many_matches_serial_evaluation(triple):
    fused, ir, vis = triple
    batch = [triple, (ir, ir, vis), (vis, ir, vis)]
    expected = [evaluate(*t) for t in batch]
    threads_before = cv2.getNumThreads()
    assert evaluate_many(batch, workers=2) == expected
    assert evaluate_many(batch) == expected
    assert cv2.getNumThreads() == threads_before


# ---------------------------------------------------------------------------------------------------------------
# Folder evaluation and CLI
# ---------------------------------------------------------------------------------------------------------------

def write_folders(root, stems=("a", "b"), fused_stems=None, shape=(48, 56)):
    for name in ("ir", "vis", "fused"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems):
        ir, vis = smooth_image(10 + i, shape), smooth_image(20 + i, shape)
        cv2.imwrite(str(root / "ir" / f"{stem}.png"), ir)
        cv2.imwrite(str(root / "vis" / f"{stem}.jpg"), cv2.cvtColor(vis, cv2.COLOR_GRAY2BGR))
    for stem in stems if fused_stems is None else fused_stems:
        ir = cv2.imread(str(root / "ir" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(root / "fused" / f"{stem}.png"), ir // 2 + 40 if ir is not None else smooth_image(5, shape))
    return root / "fused", root / "ir", root / "vis"


def test_evaluate_folders_pairs_by_stem_and_averages(tmp_path):
    fused_dir, ir_dir, vis_dir = write_folders(tmp_path)
    per_image, mean = evaluate_folders(fused_dir, ir_dir, vis_dir, workers=2)
    assert list(per_image) == ["a", "b"]
    expected_a = evaluate(*(read_gray_reference(d / name) for d, name in
                            ((fused_dir, "a.png"), (ir_dir, "a.png"), (vis_dir, "a.jpg"))))
    assert per_image["a"] == expected_a
    assert mean == {n: pytest.approx((per_image["a"][n] + per_image["b"][n]) / 2) for n in NAMES}


def test_folder_problems_are_reported_together_before_scoring(tmp_path):
    fused_dir, ir_dir, vis_dir = write_folders(tmp_path, stems=("a", "b", "c"), fused_stems=("a", "c", "extra"))
    cv2.imwrite(str(fused_dir / "c.png"), smooth_image(6, (50, 56)))  # wrong size
    with pytest.raises(DatasetError) as err:
        evaluate_folders(fused_dir, ir_dir, vis_dir)
    text = str(err.value)
    assert len(err.value.problems) == 3
    assert "extra.png" in text and "has no source pair" in text  # fused image without sources
    assert "no fused image for" in text and str(ir_dir / "b.png") in text  # source pair without fused image
    assert "size mismatch for 'c'" in text


def test_source_problems_are_reported_with_the_fused_ones(tmp_path):
    fused_dir, ir_dir, vis_dir = write_folders(tmp_path)
    (vis_dir / "b.jpg").unlink()
    (fused_dir / "b.jpg").write_bytes(b"")  # a second fused image with stem 'b'
    with pytest.raises(DatasetError) as err:
        evaluate_folders(fused_dir, ir_dir, vis_dir)
    text = str(err.value)
    assert "b.png has no partner" in text and "share the stem 'b'" in text


def test_cli_prints_the_table_and_writes_json(tmp_path):
    fused_dir, ir_dir, vis_dir = write_folders(tmp_path)
    out = tmp_path / "report" / "metrics.json"
    result = subprocess.run(
        [sys.executable, "-m", "fusion.metrics", "--ir", str(ir_dir), "--vis", str(vis_dir), "--fused",
         str(fused_dir), "--json", str(out), "--workers", "2"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["image", *NAMES]
    assert [line.split()[0] for line in lines[1:3]] == ["a", "b"] and lines[4].startswith("mean")
    doc = json.loads(out.read_text())
    assert set(doc["per_image"]) == {"a", "b"} and list(doc["mean"]) == NAMES
    assert list(doc["conventions"]) == NAMES and doc["n_images"] == 2 and "fd8da1f" in doc["reference"]
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_one_error_names_source_and_fused_problems_together(tmp_path):
    fused_dir, ir_dir, vis_dir = write_folders(tmp_path, stems=("a", "b", "c"))
    (vis_dir / "c.jpg").unlink()  # a source partner missing ...
    (ir_dir / "a.png").write_bytes(b"not an image")  # ... and, in the same round, an undecodable source
    cv2.imwrite(str(fused_dir / "b.png"), np.zeros((10, 10), np.uint8))  # and a fused image of the wrong size
    with pytest.raises(DatasetError) as err:
        evaluate_folders(fused_dir, ir_dir, vis_dir)
    message = str(err.value)
    assert "c.png has no partner" in message and "ir/a.png" in message and "b.png" in message, message


def test_cli_reports_bad_folders_and_fails(tmp_path, capsys):
    fused_dir, ir_dir, vis_dir = write_folders(tmp_path, fused_stems=("a",))
    with pytest.raises(SystemExit) as exit_info:
        metrics.main(["--ir", str(ir_dir), "--vis", str(vis_dir), "--fused", str(fused_dir), "--json",
                      str(tmp_path / "out.json")])
    assert exit_info.value.code == 2
    assert "no fused image for" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
