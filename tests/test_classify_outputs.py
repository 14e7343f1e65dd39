"""classify.outputs: one writer for one seed and for a seed study; what it writes equals what it was given."""

import json

import numpy as np
import pytest

from stargal_jax.classify import evaluate, outputs
from test_classify_evaluate import labelled_store, scored_seed


def _evaluations(num_seeds, n=120):
  rng = np.random.default_rng(num_seeds)
  labels = rng.choice([0, 1], size=n, p=[0.3, 0.7]).astype(np.int8)
  measurements = {"r_mag": rng.uniform(16, 23, n), "extendedness": rng.normal(size=n),
                  "baseline_concentration": rng.normal(size=n) + labels}
  latents = rng.normal(size=(num_seeds, n, 2)) + labels[None, :, None]
  store = labelled_store(labels)
  evaluations = [evaluate.evaluate(z, scored_seed(z[:, 0]), store, measurements, 0.3, (19.0, 21.0), seed=s,
                                   supervised_ceiling=False) for s, z in enumerate(latents)]
  return evaluations, latents, store, measurements


@pytest.mark.parametrize("num_seeds", [1, 3])
def test_outputs_hold_the_evaluations(num_seeds, tmp_path):
  evaluations, latents, store, measurements = _evaluations(num_seeds)
  out = outputs.write_outputs(tmp_path, evaluations, latents, store, measurements, 0.3, (19.0, 21.0),
                              {"pipeline": "test"}, "config text", make_plots=True)
  written = json.loads((tmp_path / "metrics.json").read_text())
  pred = np.load(tmp_path / "predictions.npz", allow_pickle=False)
  saved = np.load(tmp_path / "latents.npz", allow_pickle=False)
  np.testing.assert_array_equal(pred["objID"], store.index["objID"])
  np.testing.assert_array_equal(saved["latents"], latents[0])
  np.testing.assert_array_equal(saved["label"], store.index["label"])
  np.testing.assert_array_equal(saved["r_mag"], measurements["r_mag"])
  report = (tmp_path / "report.md").read_text()
  assert "config text" in report and "(missing" not in report  # every plot it links was written
  if num_seeds == 1:
    assert written["auc"] == pytest.approx(evaluations[0]["method"]["auc"]) and "num_seeds" not in written
    np.testing.assert_array_equal(pred["score"], evaluations[0]["score"].astype(np.float32))
    np.testing.assert_array_equal(pred["pred"], evaluations[0]["pred"])
    assert "latents_per_seed" not in saved.files and "Stability over seeds" not in report
  else:
    aucs = [e["method"]["auc"] for e in evaluations]
    assert written["auc_per_seed"] == pytest.approx(aucs) and written["auc"] == pytest.approx(np.mean(aucs))
    assert written["num_seeds"] == 3 and out["consensus"]["auc"] == pytest.approx(written["consensus"]["auc"])
    np.testing.assert_array_equal(pred["score"], np.stack([e["score"] for e in evaluations]).astype(np.float32))
    np.testing.assert_array_equal(saved["latents_per_seed"], latents.astype(np.float32))
    assert "Stability over seeds" in report and "consensus of 3 seeds" in report
    assert (tmp_path / "plots" / "seed_distribution.png").is_file()
  # Seed 0's own numbers head the file either way.
  assert written["method"]["auc"] == pytest.approx(evaluations[0]["method"]["auc"])
  assert written["pipeline"] == "test"
