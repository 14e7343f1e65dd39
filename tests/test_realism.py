"""Tests for stargal_jax.realism against independent computations (scipy's KS test and Kolmogorov
distribution, scikit-learn's AUC, Monte Carlo, injected sources, the closed form of a Gaussian's noise)."""

import numpy as np
import pytest
from scipy import ndimage, special, stats
from sklearn.metrics import roc_auc_score

from stargal_jax import paths, realism


def test_ks_distance_matches_scipy():
  rng = np.random.default_rng(0)
  for a, b in [(rng.normal(0, 1, 300), rng.normal(0.2, 1.1, 170)),
               (rng.integers(0, 4, 200).astype(float), rng.integers(0, 5, 90).astype(float))]:  # ties
    assert realism.ks_distance(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
  with_nan = np.concatenate([a, [np.nan, np.inf]])
  assert realism.ks_distance(with_nan, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
  assert np.isnan(realism.ks_distance(np.array([np.nan]), b))


def test_ks_critical_value_is_the_kolmogorov_quantile():
  for alpha in (0.05, 0.01):
    expected = special.kolmogi(alpha) * np.sqrt((300 + 500) / (300 * 500))
    assert realism.ks_critical(300, 500, alpha) == pytest.approx(expected, rel=1e-3)
  # Its level holds by Monte Carlo: two samples of one distribution exceed it in ~1% of draws.
  rng = np.random.default_rng(1)
  crit = realism.ks_critical(200, 300, 0.01)
  exceed = np.mean([realism.ks_distance(rng.normal(size=200), rng.normal(size=300)) > crit for _ in range(600)])
  assert exceed < 0.03
  assert realism.ks_pass(0.09, 1000, 1000) and not realism.ks_pass(0.2, 1000, 1000)
  assert realism.ks_pass(0.12, 60, 60)  # not significant in a small bin
  assert realism.ks_pass(0.5, 5, 1000) is None


def test_auc_and_its_standard_error():
  rng = np.random.default_rng(2)
  labels = rng.random(500) < 0.4
  scores = rng.normal(labels * 0.8, 1.0).round(1)  # ties
  assert realism.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
  aucs = []
  for _ in range(300):
    x1, x0 = rng.normal(0.8, 1, 150), rng.normal(0, 1, 200)
    aucs.append(realism.roc_auc(np.r_[np.ones(150), np.zeros(200)], np.r_[x1, x0]))
  true_auc = stats.norm.cdf(0.8 / np.sqrt(2))
  assert np.mean(aucs) == pytest.approx(true_auc, abs=0.005)
  assert realism.auc_standard_error(true_auc, 150, 200) == pytest.approx(np.std(aucs), rel=0.15)


def test_magnitude_matching_equalises_the_histograms():
  rng = np.random.default_rng(3)
  mag_a, mag_b = rng.uniform(18, 22, 400), rng.normal(20.5, 1.5, 3000)
  ia, ib = realism.match_magnitudes(mag_a, mag_b, rng)
  assert len(np.unique(ia)) == len(ia) and len(np.unique(ib)) == len(ib) and len(ia) == len(ib)
  bins = np.arange(17.0, 23.5, realism.C2ST_MATCH_WIDTH)
  assert np.array_equal(np.histogram(mag_a[ia], bins)[0], np.histogram(mag_b[ib], bins)[0])
  assert len(ia) > 380  # b covers almost all of a's range


def test_bins_and_count_fractions():
  r = np.array([17.0, 18.0, 18.5, 19.99, 20.0, 21.5, 22.0, 25.0, np.nan])
  assert realism.magnitude_bin(r[:-1]).tolist() == [0, 1, 1, 2, 3, 4, 5, 5]
  assert realism.bin_labels() == ["<18", "18-19", "19-20", "20-21", "21-22", ">=22"]
  assert np.allclose(realism.counts_fractions(r), np.array([1, 2, 1, 1, 1, 2]) / 8)


def test_background_noise_and_companions_on_synthetic_cutouts():
  rng = np.random.default_rng(4)
  sigma = np.array([0.05, 0.01, 0.02, 0.03, 0.1])
  images = rng.normal(0, 1, (6, 5, 64, 64)) * sigma[None, :, None, None]
  noise = realism.background_noise(images)
  yy, xx = np.indices((64, 64))
  outer = np.hypot(yy - 32, xx - 32) >= 24
  assert np.allclose(noise, sigma[None], rtol=0.08)  # ~1000 px: MAD error ~3%
  # Companions: Gaussian blobs injected at known places (one inside the 6 px exclusion, two outside).
  blob = lambda x, y: 0.5 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))  # noqa: E731
  images[0, 2] += blob(32, 32) + blob(12, 50) + blob(50, 14)
  images[1, 2] += blob(32, 32) + blob(35, 33)
  counts = realism.companion_counts(images)
  assert counts[0] == 2 and counts[1] == 0 and np.all(counts[2:] == 0)
  assert outer.sum() > 900


def measurements(rng, n, shift=0.0):
  return {"r_mag": rng.uniform(17, 23, n), "concentration": rng.normal(0.3 + shift, 0.05, n),
          **{q: rng.normal(0, 1, n) for q in realism.QUANTITIES if q != "concentration"}}


def test_compare_by_bin_and_field_bootstrap_are_the_ks_distances():
  rng = np.random.default_rng(5)
  a, b = measurements(rng, 1200), measurements(rng, 1500, shift=0.03)
  rows = realism.compare_by_bin(a, b)
  assert rows[0]["quantity"] == "r_mag" and rows[0]["ks"] == pytest.approx(stats.ks_2samp(a["r_mag"], b["r_mag"]).statistic)
  row = next(r for r in rows if r["quantity"] == "concentration" and r["bin"] == "20-21")
  ia, ib = (a["r_mag"] >= 20) & (a["r_mag"] < 21), (b["r_mag"] >= 20) & (b["r_mag"] < 21)
  assert row["ks"] == pytest.approx(stats.ks_2samp(a["concentration"][ia], b["concentration"][ib]).statistic)
  assert row["pass"] is False  # a 0.6 sigma shift
  assert all(r["pass"] for r in rows if r["quantity"] == "g_r")
  fields = np.repeat(np.array(["f1", "f2", "f3"]), 400)
  boot = realism.field_bootstrap(a, fields, b, n_boot=20, seed=0)
  key = ("concentration", "20-21")
  direct = [stats.ks_2samp(a["concentration"][ia & (fields == f)], a["concentration"][ia & (fields != f)]).statistic
            for f in ("f1", "f2", "f3")]
  assert boot[key]["field_median"] == pytest.approx(np.median(direct))
  assert boot[key]["field_max"] == pytest.approx(np.max(direct))
  assert boot[key]["boot_lo"] <= row["ks"] + 0.05 and boot[key]["boot_hi"] >= row["ks"] - 0.05


SMALL = realism.C2STConfig(channels=(8, 16), hidden=8, epochs=6, batch_size=32, patience=3)


def test_c2st_is_chance_on_one_distribution_and_certain_on_two():
  rng = np.random.default_rng(6)
  n = 300
  white = lambda: rng.normal(0, 1, (n, 2, 16, 16)).astype(np.float32)  # noqa: E731
  mags = lambda: rng.uniform(18, 22, n)  # noqa: E731
  same = realism.c2st(white(), white(), mags(), mags(), softening=np.ones(2), config=SMALL, seed=0)
  assert abs(same["auc"] - 0.5) < 4 * same["auc_se"] + 0.02
  correlated = ndimage.gaussian_filter(rng.normal(0, 1, (n, 2, 16, 16)), (0, 0, 1.2, 1.2))
  correlated = (correlated / correlated.std()).astype(np.float32)
  different = realism.c2st(white(), correlated, mags(), mags(), softening=np.ones(2), config=SMALL, seed=0)
  assert different["auc"] > 0.95
  assert set(different["per_bin"]) == set(realism.bin_labels())
  assert 0.9 * 2 * n <= different["n_test"] + different["n_train"] <= 2 * n  # magnitude-matched pairs


def test_c2st_views_keep_what_they_say():
  x = np.arange(2 * 5 * 64 * 64, dtype=np.float32).reshape(2, 5, 64, 64)
  r = np.hypot(*(np.indices((64, 64)) - 32))
  assert np.all(realism.c2st_view("centre")(x)[:, :, r >= realism.C2ST_RADIUS_PX] == 0)
  assert np.array_equal(realism.c2st_view("background")(x)[:, :, r >= realism.C2ST_RADIUS_PX], x[:, :, r >= realism.C2ST_RADIUS_PX])
  shuffled = realism.c2st_view("background_shuffled")(x.copy())
  outer = r >= realism.C2ST_RADIUS_PX
  assert np.array_equal(np.sort(shuffled[:, :, outer], axis=-1), np.sort(x[:, :, outer], axis=-1))
  assert not np.array_equal(shuffled[:, :, outer], x[:, :, outer])
  assert realism.c2st_view("band_i")(x).shape == (2, 1, 64, 64)
  smooth = np.ones((1, 1, 64, 64), np.float32)
  assert np.allclose(realism.c2st_view("highpass")(smooth), 0, atol=1e-6)
  with pytest.raises(KeyError, match="valid"):
    realism.c2st_view("nonsense")


def test_object_groups_split_the_m2_field():
  x = np.array([212.0, 900.0, 1100.0])
  y = np.array([923.0, 900.0, 300.0])
  assert realism.object_group(realism.M2_FIELD, x, y).tolist() == ["m2_region", "m2_region", "m2_field"]
  assert realism.object_group("001035-6-0017", x, y).tolist() == ["high_latitude"] * 3
  with pytest.raises(KeyError, match="known"):
    realism.object_group("999999-1-0001", x, y)


@pytest.mark.skipif(not (paths.shared_data_dir() / "sdss_frames" / "001035-6-0017").is_dir()
                    or not (realism.real_cache_dir() / "001035-6-0017" / "conditions.json").is_file(),
                    reason="needs shared/data and its cached real reference (benchmarks/validate_simulator.py)")
def test_cached_real_reference_is_what_the_frames_tool_cuts():
  from stargal_jax import sdss_frames
  ref = realism.real_reference(["001035-6-0017"], verbose=False)
  assert np.asarray(ref.images).shape[1:] == (5, 64, 64) and np.all(ref.snr >= realism.REAL_SNR)
  field = sdss_frames.load_field(paths.shared_data_dir() / "sdss_frames" / "001035-6-0017")
  pick = np.array([0, len(ref) // 2])
  images, _, _ = sdss_frames.cut_cutouts(field, np.stack([ref.x[pick], ref.y[pick]], axis=1))
  assert np.allclose(images, np.asarray(ref.images)[pick], atol=1e-6)
