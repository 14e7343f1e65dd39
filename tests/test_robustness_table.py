"""robustness.table on fake cells: the rows' numbers are the cells', and every number in the markdown is the JSON's."""

import json
import re

import numpy as np
import pytest

from stargal_jax.robustness import table

BINS = ["r<19", "19<=r<21", "r>=21"]


def _bins(values):
  return [{"label": label, "auc": v} for label, v in zip(BINS, values)]


def fake_simulated_cell(config="cvae.py", distribution="default", seeds=3, seed=0):
  rng = np.random.default_rng(seed)
  per_seed = rng.uniform(0.8, 0.99, seeds).tolist()
  by_mag = [rng.uniform(0.7, 0.99, 3).tolist() for _ in range(seeds)]
  baselines = {name: {"auc": float(a), "by_mag": _bins(rng.uniform(0.6, 0.99, 3).tolist())}
               for name, a in zip(("concentration", "psf_minus_extended", "sdss_psf_minus_cmodel"),
                                  rng.uniform(0.8, 0.95, 3))}
  metrics = {"auc": per_seed[0], "by_mag": _bins(by_mag[0]), "baselines": baselines}
  if seeds > 1:
    metrics.update(auc_per_seed=per_seed, by_mag_per_seed=[_bins(b) for b in by_mag])
  ceiling = lambda a: {"auc": a, "by_mag": _bins([a - 0.1, a - 0.05, a - 0.2])}
  latents = {m: {"per_seed": [ceiling(0.9)] * seeds, "auc_mean": 0.9, "auc_min": 0.88} for m in ("logistic",
                                                                                                 "boosting")}
  return {"spec": {"config": config, "distribution": distribution, "size": "full", "seeds": seeds},
          "pipeline": "ae_vae", "metrics": metrics, "wall_seconds": 123.4,
          "ceilings": {"latents": latents, "stage1_codes": {"logistic": ceiling(0.95), "boosting": ceiling(0.97)},
                       "indices": {"logistic": ceiling(0.93), "boosting": ceiling(0.96)}}}


def fake_real_cell():
  agreement = [{"label": label, "n": 10, "spearman_sdss": 0.5 + 0.1 * i, "spearman_concentration": 0.4,
                "agree_prior": 0.8, "agree_matched": 0.85 - 0.01 * i} for i, label in enumerate(["all"] + BINS)]
  return {"spec": {"config": "cvae.py", "distribution": "real_sdss", "size": "full", "seeds": 1}, "n_real": 40,
          "agreement_per_seed": [agreement], "wall_seconds": 5.0,
          "two_sample": [{"label": b["label"], "ks_score": 0.2, "ks_sdss_index": 0.3} for b in agreement]}


def test_rows_follow_the_cells():
  cell = fake_simulated_cell()
  row = table.simulated_row(cell)
  per_seed = np.array(cell["metrics"]["auc_per_seed"])
  assert row["auc_mean"] == pytest.approx(per_seed.mean()) and row["auc_worst"] == per_seed.min()
  assert row["auc_std"] == pytest.approx(per_seed.std(ddof=1))
  bins = np.array([[b["auc"] for b in s] for s in cell["metrics"]["by_mag_per_seed"]])
  np.testing.assert_allclose(row["by_mag_mean"], bins.mean(axis=0))
  baselines = cell["metrics"]["baselines"]
  best = max(baselines, key=lambda k: baselines[k]["auc"])
  assert row["best_index"] == best
  per_bin_best = np.max([[b["auc"] for b in v["by_mag"]] for v in baselines.values()], axis=0)
  np.testing.assert_allclose(row["best_index_per_bin_auc"], per_bin_best)
  assert row["beats_best_index_every_bin_mean"] == bool(np.all(bins.mean(axis=0) > per_bin_best))
  assert row["beats_best_index_every_bin_worst_seed"] == bool(np.all(bins.min(axis=0) > per_bin_best))
  assert row["ceiling_codes_boosting"] == 0.97 and row["ceiling_indices_boosting"] == 0.96


def _numbers(text):
  return [float(x) for x in re.findall(r"(?<![\w.])-?\d+\.\d+", text)]


def test_markdown_numbers_equal_the_json(tmp_path):
  cells = [fake_simulated_cell(seed=k, distribution=d) for k, d in enumerate(("default", "deeper"))]
  cells.append(fake_simulated_cell(seeds=1, seed=7))
  cells.append(fake_real_cell())
  md_path, json_path = table.write_tables(tmp_path, cells, "robustness_full")
  rows = json.loads(json_path.read_text())
  lines = [l for l in md_path.read_text().splitlines() if l.startswith("| `")]
  assert len(lines) == 4
  for line, row in zip(lines[:3], rows["simulated"]):
    expected = [row["auc_mean"], row["auc_std"], row["auc_worst"], *row["by_mag_mean"], *row["by_mag_worst"],
                row["best_index_auc"], *row["best_index_by_mag"], *row["best_index_per_bin_auc"],
                row["ceiling_latents_logistic"], row["ceiling_latents_boosting"], row["ceiling_codes_logistic"],
                row["ceiling_codes_boosting"], row["ceiling_indices_boosting"]]
    assert _numbers(line) == pytest.approx([round(v, 3) for v in expected], abs=5e-4)
    assert f"| {round(row['wall_seconds'])} |" in line and row["best_index"] in line
  real = rows["real"][0]
  expected = [*real["spearman_sdss"], *real["spearman_concentration"], *real["agree_prior"], *real["agree_matched"],
              *real["ks_score"], *real["ks_sdss_index"]]
  assert _numbers(lines[3]) == pytest.approx([round(v, 2) for v in expected], abs=5e-3)
