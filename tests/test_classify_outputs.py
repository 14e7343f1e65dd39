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


def test_classification_columns_single_run_and_consensus_by_hand():
  from scipy import stats
  rng = np.random.default_rng(5)
  scores = rng.normal(size=(3, 40))
  preds = (scores > 0).astype(np.int8)
  single = outputs.classification_columns(scores[0], preds[0], 0.3)
  assert list(single) == ["score", "score_quantile", "class"]
  np.testing.assert_allclose(single["score_quantile"], (stats.rankdata(scores[0], method="ordinal") - 1) / 39)
  study = outputs.classification_columns(scores, preds, 0.3)
  consensus = np.mean([(stats.rankdata(s, method="ordinal") - 1) / 39 for s in scores], axis=0)
  np.testing.assert_allclose(study["score"], consensus)
  np.testing.assert_allclose(study["score_quantile"], (stats.rankdata(consensus, method="ordinal") - 1) / 39)
  assert study["class"].sum() == 40 - int(np.sum(consensus <= np.quantile(consensus, 0.3)))
  assert list(study)[3:] == ["score_s000", "class_s000", "score_s001", "class_s001", "score_s002", "class_s002"]
  np.testing.assert_array_equal(study["class_s002"], preds[2])


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_the_run_catalogue_is_predictions_npz_with_evaluation_labels(num_seeds, tmp_path):
  import ml_collections
  from stargal_jax import catalogue
  evaluations, latents, store, measurements = _evaluations(num_seeds)
  measurements["index_concentration_index"] = np.linspace(0.1, 0.5, len(store))
  config = ml_collections.ConfigDict({"num_seeds": num_seeds, "pipeline": "ae_vae", "data": {"star_fraction": 0.3},
                                      "score": {"method": "latent_unit"}})
  outputs.write_outputs(tmp_path, evaluations, latents, store, measurements, 0.3, (19.0, 21.0),
                        {"data_source": "a test"}, "{}", make_plots=False, config=config)
  pred = np.load(tmp_path / "predictions.npz", allow_pickle=False)
  table = catalogue.read_catalogue(tmp_path / "catalogue.fits")
  np.testing.assert_array_equal(table["objID"], pred["objID"])
  np.testing.assert_array_equal(table["id"], np.arange(1, len(store) + 1))
  if num_seeds == 1:
    np.testing.assert_array_equal(table["score"], pred["score"])
    np.testing.assert_array_equal(table["class"], pred["pred"])
  else:
    for s in range(num_seeds):
      np.testing.assert_array_equal(table[f"score_s{s:03d}"], pred["score"][s])
      np.testing.assert_array_equal(table[f"class_s{s:03d}"], pred["pred"][s])
  names = {0: "STAR", 1: "GALAXY", 2: "QSO"}
  assert table["eval_label"].tolist() == [names[int(c)] for c in store.index["label"]]
  np.testing.assert_allclose(table["concentration"], measurements["index_concentration_index"], rtol=1e-6)
  np.testing.assert_allclose(table["r_mag"], measurements["r_mag"], rtol=1e-6)
  assert table.meta["DATASRC"] == "a test" and table.meta["EVALSET"] and table.meta["NSEEDS"] == num_seeds
  assert "n_nonfinite" not in table.colnames  # this store lists no input files to count them in
