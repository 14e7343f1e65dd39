"""`run(config, workdir)`: the whole job behind `launch.py`, importable from notebooks and tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from stargal_jax import evaluate, inputs as inputs_lib, pipelines
from stargal_jax.data import normalize as normalization


def run(config, workdir: str | Path) -> dict:
  """Loads the data named by `config.data` (embedded default data when empty) and runs `config.pipeline`."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  from stargal_jax import segmentation_job  # Segmentation jobs share this entry point.
  if config.pipeline in segmentation_job.JOBS:
    return segmentation_job.JOBS[config.pipeline](config, workdir)
  pipelines.get_pipeline(config.pipeline)  # Fails before any work on an unknown name.
  print(f"[data] devices: {jax.devices()}", flush=True)
  inputs = inputs_lib.load_inputs(config.data, seed=config.seed)
  return classify(config, inputs, workdir)


def classify(config, inputs: inputs_lib.Inputs, workdir: Path) -> dict:
  """Trains `config.pipeline` without labels, scores the labelled set, writes every output to `workdir`."""
  t0 = time.perf_counter()
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  pipeline = pipelines.get_pipeline(config.pipeline)
  normalization.save_normalizer(workdir / "normalizer.json", inputs.normalizer)
  (workdir / "data_summary.json").write_text(json.dumps(inputs_lib.describe(inputs), indent=2, default=str))
  print(f"[data] {inputs.source}: {len(inputs.unlabelled)} unlabelled, {len(inputs.labelled)} labelled",
        flush=True)

  key = jax.random.key(config.seed)
  trained = pipeline(config, inputs, workdir, key)
  latents = np.asarray(trained["latents"], dtype=np.float64)
  raw_score = evaluate.score_from_latents(latents, config.score, seed=config.seed)
  measurements = evaluate.image_measurements(inputs.labelled)
  evaluation = evaluate.evaluate(latents, raw_score, inputs.labelled, measurements, config.data.star_fraction,
                                 tuple(config.data.mag_bins), seed=config.seed,
                                 supervised_ceiling=config.eval.supervised_ceiling)
  extra = {"pipeline": config.pipeline, "seed": config.seed, "data_source": inputs.source,
           "n_labelled": len(inputs.labelled), "n_unlabelled": len(inputs.unlabelled),
           "wall_seconds": time.perf_counter() - t0, "devices": [str(d) for d in jax.devices()]}
  out = evaluate.write_outputs(workdir, evaluation, latents, inputs.labelled, measurements, extra,
                               config.to_json_best_effort(indent=2), make_plots=config.eval.plots)
  base = {k: round(v["auc"], 4) for k, v in out["baselines"].items()}
  print(f"[result] auc={out['auc']:.4f} auc_best_sign={out['auc_best_sign']:.4f} accuracy={out['accuracy']:.4f} "
        f"| baselines {base} | {time.perf_counter() - t0:.0f}s | {workdir}", flush=True)
  return out
