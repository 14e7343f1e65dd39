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
  if config.num_seeds > 1:
    latents_per_seed = np.asarray(pipelines.run_seeds(config, inputs, workdir, key), dtype=np.float64)
  else:
    latents_per_seed = np.asarray(pipeline(config, inputs, workdir, key)["latents"], dtype=np.float64)[None]
  measurements = evaluate.image_measurements(inputs.labelled)
  evaluations = []
  for s, latents in enumerate(latents_per_seed):
    raw_score = evaluate.score_from_latents(latents, config.score, seed=config.seed + s,
                                           measurements=measurements)
    evaluations.append(evaluate.evaluate(
        latents, raw_score, inputs.labelled, measurements, config.data.star_fraction, tuple(config.data.mag_bins),
        seed=config.seed + s, supervised_ceiling=config.eval.supervised_ceiling and s == 0))
  extra = {"pipeline": config.pipeline, "seed": config.seed, "data_source": inputs.source,
           "n_labelled": len(inputs.labelled), "n_unlabelled": len(inputs.unlabelled),
           "wall_seconds": time.perf_counter() - t0, "devices": [str(d) for d in jax.devices()]}
  config_text = config.to_json_best_effort(indent=2)
  out = evaluate.write_outputs(workdir, evaluations[0], latents_per_seed[0], inputs.labelled, measurements, extra,
                               config_text, make_plots=config.eval.plots)
  base = {k: round(v["auc"], 4) for k, v in out["baselines"].items()}
  if config.num_seeds > 1:
    out = evaluate.write_seed_study(workdir, out, evaluations, latents_per_seed, inputs.labelled, measurements,
                                    config.data.star_fraction, tuple(config.data.mag_bins), config_text,
                                    make_plots=config.eval.plots)
    print(f"[result] {config.num_seeds} seeds: auc {out['auc_mean']:.4f} +- {out['auc_std']:.4f} "
          f"(min {out['auc_min']:.4f}, max {out['auc_max']:.4f}), accuracy {out['accuracy_mean']:.4f}, "
          f"seed agreement (ARI) {out['seed_agreement_ari']:.3f}, consensus auc {out['consensus']['auc']:.4f} | baselines {base} | "
          f"{time.perf_counter() - t0:.0f}s | {workdir}", flush=True)
    return out
  print(f"[result] auc={out['auc']:.4f} auc_best_sign={out['auc_best_sign']:.4f} accuracy={out['accuracy']:.4f} "
        f"| baselines {base} | {time.perf_counter() - t0:.0f}s | {workdir}", flush=True)
  return {k: v for k, v in out.items() if k != "plots"}
