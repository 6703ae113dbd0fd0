"""The verdict's intervals hold the noise of training the detector as well as that of the evaluation images.

Simulated experiments with known noise (stubbed detections, no training): a detector's skill varies with its seed,
images vary in difficulty (shared by every detector scored on them) and each detector errs on each image its own
way. The true gain is the expected mAP@50 difference over seeds on the whole image population, computed once on
20,000 images with Gauss-Hermite quadrature over the seed effect. Each experiment scores 3 seeds per candidate on
20 fresh images, as a pipeline run does; the 95% interval must contain the true gain in 92-98% of 400 experiments (binomial
standard error 1.1%).
The images-only interval (what the pipeline reported before) misses far more often.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from detection.bootstrap import ClassMatches, ImageMatches, PairedBootstrap, map50, seed_and_image_interval

SKILL = {"a": 1.0, "b": 0.8}   # mean detector skill of the two candidates (their true gain is about +0.04)
SEED_SD = 0.6                  # spread of skill across detector seeds: about 0.04 mAP@50 per seed
IMAGE_SD = 0.5                 # spread of image difficulty, shared by every detector scored on an image


def _images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(1, 5, n), IMAGE_SD * rng.standard_normal(n)


def _detections(rng: np.random.Generator, n_gt: np.ndarray, difficulty: np.ndarray, skill: float) -> ImageMatches:
    """One detector's matched detections: 90% of the boxes found, scored by skill + image difficulty + its own
    noise, and two false positives per image on average."""
    n = n_gt.size
    tp_image = np.repeat(np.arange(n), n_gt)
    tp_image = tp_image[rng.random(tp_image.size) < 0.9]
    tp_score = skill + difficulty[tp_image] + rng.standard_normal(tp_image.size)
    fp_image = np.repeat(np.arange(n), rng.poisson(2.0, n))
    fp_score = rng.standard_normal(fp_image.size) - 0.5 * difficulty[fp_image]
    order = np.argsort(-np.concatenate([tp_score, fp_score]), kind="mergesort")
    image = np.concatenate([tp_image, fp_image])[order]
    tp = np.concatenate([np.ones(tp_image.size, bool), np.zeros(fp_image.size, bool)])[order]
    return ImageMatches(list(range(n)), [1], n_gt[:, None].astype(float), [ClassMatches(image, tp)])


def _true_gain() -> float:
    rng = np.random.default_rng(123)
    n_gt, difficulty = _images(rng, 20_000)
    nodes, weights = np.polynomial.hermite_e.hermegauss(9)
    weights = weights / weights.sum()
    expected = {name: sum(w * map50(_detections(np.random.default_rng([7, k]), n_gt, difficulty,
                                                 skill + SEED_SD * z))[0]
                          for k, (z, w) in enumerate(zip(nodes, weights)))
                for name, skill in SKILL.items()}
    return float(expected["a"] - expected["b"])


def test_gain_intervals_cover_the_true_gain_with_seed_and_image_noise():
    true_gain = _true_gain()
    covered, covered_images_only, seed_sds = [], [], []
    for experiment in range(400):
        rng = np.random.default_rng([experiment, 99])
        n_gt, difficulty = _images(rng, 20)
        boot = PairedBootstrap(list(range(20)), n_resamples=1000, seed=experiment)
        for name, skill in SKILL.items():
            boot.add(name, [_detections(rng, n_gt, difficulty, skill + SEED_SD * rng.standard_normal())
                            for _seed in range(3)])
        gain, images_only = boot.gain("a", "b"), boot.image_gain("a", "b")
        assert gain.n_seeds == 3 and not gain.provisional and images_only.dof is None
        covered.append(gain.low <= true_gain <= gain.high)
        covered_images_only.append(images_only.low <= true_gain <= images_only.high)
        seed_sds.append(gain.seed_std)
    coverage, coverage_images_only = np.mean(covered), np.mean(covered_images_only)
    print(f"coverage {coverage:.3f}, images only {coverage_images_only:.3f}, true gain {true_gain:+.4f}")
    assert 0.92 <= coverage <= 0.98, coverage
    assert coverage_images_only < 0.85, coverage_images_only  # training noise left out: far below 95%
    assert np.median(seed_sds) > 0.02  # the simulation does have training noise of the size seen in real runs


def test_one_seed_gives_the_images_only_interval_marked_provisional():
    replicates = np.random.default_rng(0).normal(0.05, 0.02, 1000)
    iv = seed_and_image_interval(np.array([0.05]), replicates[None, :], n_images=15)
    assert iv.provisional and iv.n_seeds == 1 and iv.seed_std is None and iv.dof is None
    assert (iv.low, iv.high) == pytest.approx(tuple(np.percentile(replicates, [2.5, 97.5])), abs=1e-12)
    assert iv.to_dict()["provisional"] is True


def test_the_interval_adds_the_seed_spread_to_the_shared_image_noise_by_hand():
    """Three seeds whose replicates share one image component (variance 0.02^2) plus their own (0.01^2): the
    image part is the covariance between seeds, the seed part the per-seed values' variance over 3."""
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 0.02, 4000)
    replicates = np.stack([0.1 * k + shared + rng.normal(0, 0.01, 4000) for k in range(3)])
    points = np.array([0.30, 0.36, 0.45])
    iv = seed_and_image_interval(points, replicates, n_images=15)
    cov = np.cov(replicates)
    image_var = (cov[0, 1] + cov[0, 2] + cov[1, 2]) / 3
    assert image_var == pytest.approx(0.02 ** 2, rel=0.1)
    seed_var = np.sum((points - points.mean()) ** 2) / 2
    dof = (image_var + seed_var / 3) ** 2 / ((seed_var / 3) ** 2 / 2 + image_var ** 2 / 14)
    half = stats.t.ppf(0.975, dof) * np.sqrt(image_var + seed_var / 3)
    assert iv.point == pytest.approx(0.37)
    assert (iv.low, iv.high) == pytest.approx((0.37 - half, 0.37 + half), abs=1e-12)
    assert iv.seed_std == pytest.approx(np.sqrt(seed_var)) and iv.image_se == pytest.approx(np.sqrt(image_var))
    assert iv.dof == pytest.approx(dof) and not iv.provisional
    # the images-only interval of the same numbers is far narrower: it leaves the seeds' spread out
    images_only = np.percentile(replicates.mean(axis=0), [2.5, 97.5])
    assert images_only[1] - images_only[0] < (iv.high - iv.low) / 3


def test_identical_seeds_and_identical_candidates_give_a_zero_width_gain():
    rng = np.random.default_rng(2)
    n_gt, difficulty = _images(rng, 20)
    detector = _detections(rng, n_gt, difficulty, 1.0)
    boot = PairedBootstrap(list(range(20)), 1000, seed=0)
    boot.add("a", [detector, detector, detector])
    boot.add("b", [detector, detector, detector])
    gain = boot.gain("a", "b")
    assert gain.point == gain.low == gain.high == 0.0 and gain.seed_std == 0.0
    boot.add("two_seeds", [detector, detector])
    with pytest.raises(ValueError, match="pairs them by seed"):
        boot.gain("a", "two_seeds")
