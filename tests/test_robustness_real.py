"""robustness.real: the label-free agreement and the two-sample check against direct scipy computations."""

import numpy as np
import pytest
from scipy import stats

from stargal_jax.robustness import real


def _measurements(n, rng):
  return {"r_mag": rng.uniform(16, 23, n), "baseline_sdss_psf_minus_cmodel": rng.normal(0.3, 0.4, n),
          "baseline_concentration": rng.normal(size=n)}


def test_agreement_by_magnitude_by_hand():
  rng = np.random.default_rng(0)
  n = 400
  m = _measurements(n, rng)
  score = m["baseline_sdss_psf_minus_cmodel"] + rng.normal(0, 0.3, n)
  pred = (score > np.quantile(score, 0.3)).astype(np.int8)
  rows = real.agreement({"score": score, "pred": pred}, m, (19.0, 21.0))
  assert [r["label"] for r in rows] == ["all", "r<19", "19<=r<21", "r>=21"]
  sdss_galaxy = m["baseline_sdss_psf_minus_cmodel"] > 0.145
  matched = score > np.quantile(score, 1 - sdss_galaxy.mean())
  for row, sel in zip(rows, [np.ones(n, bool), m["r_mag"] < 19, (m["r_mag"] >= 19) & (m["r_mag"] < 21),
                             m["r_mag"] >= 21]):
    assert row["n"] == sel.sum()
    assert row["spearman_sdss"] == pytest.approx(stats.spearmanr(score[sel], m["baseline_sdss_psf_minus_cmodel"][sel])[0])
    assert row["agree_prior"] == pytest.approx(np.mean((pred[sel] == 1) == sdss_galaxy[sel]))
    assert row["agree_matched"] == pytest.approx(np.mean(matched[sel] == sdss_galaxy[sel]))


def test_two_sample_ks_of_standardised_scores():
  rng = np.random.default_rng(1)
  real_m, sim_m = _measurements(300, rng), _measurements(500, rng)
  real_score, sim_score = rng.normal(5, 2, 300), rng.standard_t(3, 500)
  rows = real.two_sample(real_score, real_m, sim_score, sim_m, (19.0, 21.0))
  z = lambda v: (v - np.median(v)) / (1.4826 * np.median(np.abs(v - np.median(v))))
  faint_r, faint_s = real_m["r_mag"] >= 21, sim_m["r_mag"] >= 21
  assert rows[3]["ks_score"] == pytest.approx(stats.ks_2samp(z(real_score)[faint_r], z(sim_score)[faint_s]).statistic)
  assert rows[0]["ks_sdss_index"] == pytest.approx(stats.ks_2samp(real_m["baseline_sdss_psf_minus_cmodel"],
                                                                  sim_m["baseline_sdss_psf_minus_cmodel"]).statistic)


def test_subset_reads_through():
  class Store:
    summary = {"n_objects": 10}
    index = {"objID": np.arange(10) * 3}

    def __len__(self):
      return 10

    def read(self, idx):
      return np.asarray(idx)[:, None] * 1.0

  subset = real.Subset(Store(), 4, seed=2)
  assert len(subset) == 4 and np.all(np.diff(subset.rows) > 0)
  np.testing.assert_array_equal(subset.read(np.array([0, 3]))[:, 0], subset.rows[[0, 3]])
  np.testing.assert_array_equal(subset.index["objID"], subset.rows * 3)
  assert len(real.Subset(Store(), None)) == 10


def test_subset_of_a_packed_store_keeps_its_structured_index(tmp_path):
  """A packed store's index is a structured array: the subset's rows are the store's rows at the chosen order."""
  from stargal_jax.data import formats, store as stores
  images = np.random.default_rng(5).normal(size=(6, 1, 5, 64, 64)).astype(np.float32)
  (tmp_path / "unl").mkdir()
  for k in range(6):
    formats.write_unlabelled(tmp_path / "unl" / f"u{k}.npy", images[k])
  store = stores.open_dataset(str(tmp_path / "unl" / "*.npy"), kind="unlabelled", cache_dir=tmp_path / "c")
  subset = real.Subset(store, 3, seed=1)
  chosen = np.sort(np.random.default_rng(1).choice(6, 3, replace=False))
  np.testing.assert_array_equal(subset.rows, chosen)
  np.testing.assert_array_equal(subset.index["file"], store.index["file"][chosen])
  np.testing.assert_array_equal(subset.read(np.arange(3)), images[chosen, 0])


def test_a_real_cell_finished_before_its_default_cell_gains_the_two_sample_check(tmp_path, monkeypatch):
  """The check is added from the saved seed-0 score (equal to `two_sample` on it), once; a cell whose default cell
  has not finished is left as it is."""
  from stargal_jax.robustness import cells
  rng = np.random.default_rng(2)
  spec = cells.CellSpec("bootstrap.py:no_reference", cells.REAL, "smoke", 1)
  directory = cells.cell_dir(tmp_path, spec)
  directory.mkdir(parents=True)
  real_m, sim_m = _measurements(200, rng), _measurements(300, rng)
  score, sim_score = rng.normal(1, 2, 200), rng.normal(size=300)
  np.savez(directory / "predictions.npz", score=score[None].astype(np.float32))
  cells.write_cell(directory, {"spec": {}, "n_real": 200})
  monkeypatch.setattr(real, "_default_cell_scores", lambda out, s: None)
  assert "two_sample" not in real.add_two_sample(tmp_path, spec, log=lambda *_: None)
  monkeypatch.setattr(real, "_default_cell_scores", lambda out, s: (sim_score, sim_m))
  monkeypatch.setattr(real, "real_store", lambda config, size, log: "store")
  monkeypatch.setattr(real, "_real_measurements", lambda store: real_m)
  cell = real.add_two_sample(tmp_path, spec, log=lambda *_: None)
  expected = real.two_sample(score.astype(np.float32).astype(np.float64), real_m, sim_score, sim_m, (19.0, 21.0))
  assert cell["two_sample"][3]["ks_score"] == pytest.approx(expected[3]["ks_score"])
  assert cells.finished(tmp_path, spec)["two_sample"][0]["ks_sdss_index"] == pytest.approx(
    expected[0]["ks_sdss_index"])
