"""The classification job: train `config.pipeline` without labels, score the labelled set label-free, evaluate,
write the outputs. `run(config, workdir)` is its entry in the run registry (`experiment.RUNS`); `classify` takes
inputs already loaded (the segmentation wing's seg_cvae job runs it on masked copies of the data).

With several processes (`launch.py --multihost`) every process runs the same job (the training and prediction are
global programs; checkpoints are written through orbax, which coordinates the processes); only process 0 writes the
outputs to `workdir`, the others write theirs to a scratch directory that is removed.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from stargal_jax import distributed, inputs as inputs_lib
from stargal_jax.classify import evaluate, outputs, pipelines, scoring
from stargal_jax.data import normalize as normalization


def run(config, workdir: Path) -> dict:
  """The run-registry entry: loads the data named by `config.data` (embedded default data when empty), then
  `classify`. Returns the metrics written to metrics.json."""
  pipelines.get_pipeline(config.pipeline)  # Fails before any work on an unknown name.
  pipelines.check_seed_scope(config)
  print(f"[data] devices: {jax.devices()}", flush=True)
  return classify(config, load_inputs(config), workdir)["metrics"]


def load_inputs(config) -> inputs_lib.Inputs:
  """`inputs.load_inputs`; with several processes, process 0 first (it may simulate the default data and pack
  the stores into the cache), then the others, which find the cache complete when it is shared."""
  if distributed.is_writer():
    inputs = inputs_lib.load_inputs(config.data, seed=config.seed)
  distributed.barrier("stargal_jax.load_inputs")
  if not distributed.is_writer():
    inputs = inputs_lib.load_inputs(config.data, seed=config.seed)
  return inputs


def classify(config, inputs: inputs_lib.Inputs, workdir: Path) -> dict:
  """Trains `config.pipeline` without labels, scores the labelled set, writes every output to `workdir`
  (checkpoints from every process; the outputs from process 0 only: see the module docstring).

  Returns {'metrics': what metrics.json holds, 'score': (S, N) float32, the label-free scores as
  predictions.npz stores them}."""
  if not distributed.is_writer():
    with tempfile.TemporaryDirectory() as scratch:
      return _classify(config, inputs, workdir, Path(scratch))
  return _classify(config, inputs, workdir, workdir)


def _classify(config, inputs: inputs_lib.Inputs, workdir: Path, out_dir: Path) -> dict:
  """classify, with the checkpoints under `workdir` and the outputs in `out_dir`."""
  t0 = time.perf_counter()
  workdir, out_dir = Path(workdir), Path(out_dir)
  workdir.mkdir(parents=True, exist_ok=True)
  normalization.save_normalizer(out_dir / "normalizer.json", inputs.normalizer)
  (out_dir / "data_summary.json").write_text(json.dumps(inputs_lib.describe(inputs), indent=2, default=str))
  print(f"[data] {inputs.source}: {len(inputs.unlabelled)} unlabelled, {len(inputs.labelled)} labelled",
        flush=True)

  latents_per_seed = np.asarray(pipelines.train_latents(config, inputs, workdir, jax.random.key(config.seed)),
                                dtype=np.float64)
  measurements = scoring.image_measurements(inputs.labelled)
  star_fraction, mag_bins = config.data.star_fraction, tuple(config.data.mag_bins)
  evaluations = []
  for s, latents in enumerate(latents_per_seed):
    scored = scoring.score_latents(latents, measurements, config, seed=config.seed + s)
    evaluations.append(evaluate.evaluate(
        latents, scored, inputs.labelled, measurements, star_fraction, mag_bins, seed=config.seed + s,
        supervised_ceiling=config.eval.supervised_ceiling and s == 0))
  extra = {"pipeline": config.pipeline, "seed": config.seed, "data_source": inputs.source,
           "n_labelled": len(inputs.labelled), "n_unlabelled": len(inputs.unlabelled),
           "devices": [str(d) for d in jax.devices()]}
  if config.eval.get("supervised_cnn", False):  # the supervised CNN reference, on the labels (evaluation only)
    extra["supervised_cnn"] = evaluate.supervised_cnn(config, inputs, measurements, workdir)
  extra["wall_seconds"] = time.perf_counter() - t0
  out = outputs.write_outputs(out_dir, evaluations, latents_per_seed, inputs.labelled, measurements, star_fraction,
                              mag_bins, extra, config.to_json_best_effort(indent=2),
                              make_plots=config.eval.plots and distributed.is_writer(), config=config)
  base = {k: round(v["auc"], 4) for k, v in out["baselines"].items()}
  if "supervised_cnn" in out:
    base = f"{base} | supervised CNN {out['supervised_cnn']['auc']:.4f}"
  if config.num_seeds > 1:
    print(f"[result] {config.num_seeds} seeds: auc {out['auc_mean']:.4f} +- {out['auc_std']:.4f} "
          f"(min {out['auc_min']:.4f}, max {out['auc_max']:.4f}), accuracy {out['accuracy_mean']:.4f}, "
          f"seed agreement (ARI) {out['seed_agreement_ari']:.3f}, consensus auc {out['consensus']['auc']:.4f} | "
          f"baselines {base} | {time.perf_counter() - t0:.0f}s | {workdir}", flush=True)
  else:
    print(f"[result] auc={out['auc']:.4f} auc_best_sign={out['auc_best_sign']:.4f} accuracy={out['accuracy']:.4f} "
          f"| baselines {base} | {time.perf_counter() - t0:.0f}s | {workdir}", flush=True)
  return {"metrics": out, "score": np.stack([e["score"] for e in evaluations]).astype(np.float32)}
