"""The segmentation half of the robustness protocol: every method on the default data and every shifted
simulation (scored against truth), and on the real frames (no truth: counts, the no-flood check, figures).

`python benchmarks/segmentation_protocol.py --run=RUN --out=DIR [--distributions=default,seeing_1.8,...]
[--n-tune=500 --n-score=1500] [--tune-on=default,...] [--settings-from=JSON] [--segmenters=DIR] [--skip-real] [--skip-sim]`
(`benchmarks/segmentation_protocol.sh` runs the README's measurement in steps of ~15 min.)

RUN is a `configs/segmentation.py` workdir with a trained AE checkpoint: its residual AE is restored (not
retrained) and two k-means segmenters are fitted on the default unlabelled data (or reused from its
segmenter.npz / --segmenters), one on the pure hypercolumns (detection_share 0, the study's) and one with the
detection channel (the run's share). Settings: our deblending contrast, faint-source peak (or none) and mask edges
on the tuning splits of the --tune-on distributions together (or reused from --settings-from); SEP's and photutils' best grid settings on each distribution's own tuning split (their
best); everything is reported on the scored split (disjoint rows of the same labelled set). Shifted data sets
are the simulator's own knobs (`DISTRIBUTIONS`), generated on first use and cached under their own names; the
segmenters are not refitted on them (a transfer test, as for real data). Writes DIR/segmentation_protocol.md and
DIR/segmentation_protocol.json, and DIR/real/*.png.
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `configs` from a checkout, wherever it runs from

from stargal_jax import host_runtime  # noqa: E402

host_runtime.configure()

import ml_collections  # noqa: E402

from configs import segmentation as segmentation_config  # noqa: E402
from stargal_jax import inputs as inputs_lib  # noqa: E402
from stargal_jax import metrics, stages  # noqa: E402
from stargal_jax.segment import (deblend, faint, fitted_model, hypercolumns, labelling, matching,  # noqa: E402
                                 protocol, real_data)
from stargal_jax.segment import report as segment_report  # noqa: E402

# The shifted simulations: config.data.sim_params overrides by name (simulator v2's own knobs), each cached under
# its own name by default_data (-p<hash>).
DISTRIBUTIONS: dict[str, dict] = {
  "default": {},
  "seeing_1.8": {"seeing_r_median_arcsec": 1.8},
  "neighbours_x2": {"neighbour_density_scale": 2.0},
  "shallower_0.5": {"depth_mag": -0.5},
  "deeper_0.5": {"depth_mag": 0.5},
  "stars_0.2": {"point_fraction": 0.2},
  "stars_0.6": {"point_fraction": 0.6},
  "no_neighbours": {"neighbour_density_scale": 0.0},
}

def log(message: str, t0: float) -> None:
  print(f"[segmentation_protocol] {message} ({time.perf_counter() - t0:.0f}s)", flush=True)


def fitted_by_share(run: Path, config, inputs, shares, out: Path) -> dict:
  """Segmenters of the run's AE fitted on the default unlabelled data for each detection share (cached in
  `out`)."""
  sc = config.seg
  result = stages.restore_stage(fitted_model.autoencoder_stage(sc, sc.model), run / "checkpoints" / sc.model)
  fitted = {}
  for share in shares:
    sc_share = ml_collections.ConfigDict(sc.to_dict())
    sc_share.detection_share = float(share)
    path = out / f"segmenter_share{share:g}.npz"
    if not path.is_file() and float(share) == float(sc.detection_share) and (run / "segmenter.npz").is_file():
      # The run's own segmenter (fitted with this share): reused, its flood limit measured if it has none.
      layers, segmenters = fitted_model.load_segmenters(run / "segmenter.npz")
      hc = hypercolumns.make_hypercolumn_fn(result, layers,
                                            detection=hypercolumns.DetectionChannel.from_config(sc_share))
      own = fitted_model.FittedSegmentation(result, layers, inputs.normalizer, {k: segmenters[k] for k in [int(sc.k)]},
                                            hc)
      fitted_model.save_segmenter(path, fitted_model.add_flood_limits(own, sc_share, inputs.unlabelled, config.seed))
    if path.is_file():
      layers, segmenters = fitted_model.load_segmenters(path)
      hc = hypercolumns.make_hypercolumn_fn(result, layers,
                                            detection=hypercolumns.DetectionChannel.from_config(sc_share))
      fitted[float(share)] = fitted_model.FittedSegmentation(result, layers, inputs.normalizer, segmenters, hc)
    else:
      fitted[float(share)] = fitted_model.fit_segmentation(result, sc_share, inputs.normalizer, inputs.unlabelled,
                                                           [int(sc.k)], config.seed)
      fitted_model.save_segmenter(path, fitted[float(share)])
  return fitted


def faint_from(refinements: dict):
  """The chosen faint-source options (None: the tuning chose none)."""
  return None if refinements["best"]["faint_peak"] is None else faint.FaintOptions(**refinements["faint"])


def edge_from(refinements: dict):
  """The chosen mask-edge options (None: the clusters' own edges, or settings from before the edges)."""
  return protocol.edge_options_of(refinements["best"])


def load_distribution(config, name: str, n_labelled: int):
  data = ml_collections.ConfigDict(config.data.to_dict())
  for field, value in DISTRIBUTIONS[name].items():
    data.sim_params[field] = value
  if name != "default":
    data.default_n_labelled, data.default_n_unlabelled = int(n_labelled), 64
  return inputs_lib.load_inputs(data, seed=config.seed)


def run_distribution(name: str, inputs, fitted, methods, k: int, options, deblending, faint_options, edge_options,
                     sizes, seed: int, t0: float) -> dict:
  """Baselines tuned on this distribution's tuning split; every method scored on its scored split."""
  tune_rows, score_rows = protocol.split_rows(len(inputs.labelled), *sizes, seed=seed)
  tune = protocol.make_split(inputs.labelled.read, inputs.truth, tune_rows)
  score = protocol.make_split(inputs.labelled.read, inputs.truth, score_rows)
  chosen, grids, masks = {}, {}, {}
  for base, grid in (("SEP", protocol.SEP_GRID), ("photutils", protocol.PHOTUTILS_GRID)):
    chosen[base], grids[base] = protocol.tune_baseline(base, grid, tune, options, tune.snr)
    masks[base] = protocol.baseline_masks(base, score.images, chosen[base], options, score.snr)
    log(f"{name}: {base} best {chosen[base]}", t0)
  ours = protocol.our_masks(fitted, k, score, options, deblending, methods, faint_options=faint_options,
                            edge_options=edge_options)
  flooded = {n: int(f.sum()) for n, (_, f) in ours.items()}
  masks.update({n: m for n, (m, _) in ours.items()})
  scores = protocol.score_all(masks, score)
  counts = {n: matching.per_cutout_counts(masks[n], score.true_masks, score.snr, score.truth)
            for n in ("SEP", "photutils", protocol.FULL)}
  log(f"{name}: {len(masks)} methods scored on {len(score_rows)} cutouts", t0)
  return {"n_tune": len(tune_rows), "n_score": len(score_rows), "overrides": DISTRIBUTIONS[name],
          "source": inputs.source, "baseline_settings": chosen, "baseline_grids": grids, "scores": scores,
          "flooded_cutouts": flooded, "checks": protocol.done_checks(scores, protocol.FULL),
          "check_margins": protocol.check_margins(counts, protocol.FULL, seed=seed)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", required=True, help="a finished configs/segmentation.py workdir")
  parser.add_argument("--out", required=True)
  parser.add_argument("--distributions", default=",".join(DISTRIBUTIONS))
  parser.add_argument("--n-tune", type=int, default=500, help="tuning cutouts per distribution")
  parser.add_argument("--n-score", type=int, default=1500, help="scored cutouts per distribution")
  parser.add_argument("--shifted-n-labelled", type=int, default=2000, help="labelled cutouts simulated per shift")
  parser.add_argument("--tune-on", default="default",
                      help="distributions whose tuning splits choose our settings together (the mean of their "
                           "selection scores); their scored splits stay unseen")
  parser.add_argument("--shares", default="0,0.5", help="detection shares of the two segmenters (pure, ours)")
  parser.add_argument("--settings-from", default=None,
                      help="a segmentation_protocol.json of a run with the default distribution: its deblend "
                           "contrast, faint peak and mask edges (chosen on --tune-on's tuning splits) are reused, and, for the "
                           "real frames, SEP's and photutils' best settings on the default data")
  parser.add_argument("--segmenters", default=None,
                      help="folder caching the fitted segmenters (default: --out), shared by several runs")
  parser.add_argument("--split-seed", type=int, default=None,
                      help="seed of the tuning / scored draw of each distribution (default: the run's seed); another "
                           "value measures how much the choice and the verdicts depend on the draw")
  parser.add_argument("--skip-sim", action="store_true")
  parser.add_argument("--skip-real", action="store_true")
  args = parser.parse_args(argv)
  names = [n for n in args.distributions.split(",") if n]
  tune_on = [n for n in args.tune_on.split(",") if n]
  for flag, given in (("--distributions", names), ("--tune-on", tune_on)):
    unknown = [n for n in given if n not in DISTRIBUTIONS]
    if unknown:
      raise SystemExit(f"{flag}: unknown {unknown}; valid: {list(DISTRIBUTIONS)}")
  if not tune_on:
    raise SystemExit("--tune-on: at least one distribution")
  run, out = Path(args.run), Path(args.out)
  if not (run / "config.json").is_file():
    raise SystemExit(f"--run={run}: no config.json (not a finished configs/segmentation.py run)")
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  config = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
  split_seed = int(config.seed) if args.split_seed is None else args.split_seed
  # Settings a run made before them (deblending, crowding) take today's defaults.
  config.seg = ml_collections.ConfigDict({**segmentation_config.seg_config().to_dict(), **config.seg.to_dict()})
  sc = config.seg
  k = int(sc.k)
  options = labelling.LabelOptions.from_config(sc)
  shares = [float(s) for s in args.shares.split(",")]
  if len(shares) != 2:
    raise SystemExit("--shares: two values (the pure segmenter's, then ours)")
  default = load_distribution(config, "default", 0)
  loaded = {"default": default}

  def inputs_for(name: str):
    """Each distribution loaded once (tuning and scoring share it)."""
    if name not in loaded:
      loaded[name] = load_distribution(config, name, args.shifted_n_labelled)
    return loaded[name]

  segmenters_dir = Path(args.segmenters) if args.segmenters else out
  segmenters_dir.mkdir(parents=True, exist_ok=True)
  fitted = fitted_by_share(run, config, default, shares, segmenters_dir)
  if shares[0] != 0.0:
    raise SystemExit("--shares: the first (the pure segmenter's) must be 0")
  methods = protocol.our_methods(shares[1])
  log(f"segmenters fitted (flood limits {[f.segmenters[k].flood_limit for f in fitted.values()]})", t0)
  results = {"command": " ".join(sys.argv), "run": str(run), "k": k, "split_seed": split_seed,
             "selection": "mean of central-object IoU and detection F1 on the tuning splits, among the settings whose "
                          "mean neighbour purity there is at least SEP's (all, when none is)",
             "matching": matching.__doc__.split("\n\n")[1], "distributions": {}}
  json_path, md_path = out / "segmentation_protocol.json", out / "segmentation_protocol.md"
  prior = json.loads(Path(args.settings_from).read_text()) if args.settings_from else None
  if prior is not None:
    results["refinements"] = {**prior["refinements"], "reused_from": args.settings_from}
  if not args.skip_sim:
    if prior is None:
      tunes = []
      for name in tune_on:
        inputs = inputs_for(name)
        tune_rows, _ = protocol.split_rows(len(inputs.labelled), args.n_tune, args.n_score, seed=split_seed)
        tunes.append(protocol.make_split(inputs.labelled.read, inputs.truth, tune_rows))
      base = deblend.DeblendOptions.from_config(sc)
      # The neighbour target (purity at least SEP's) as a floor on the choice: SEP tuned on the same splits.
      sep_purity, sep_settings = protocol.tuned_purity("SEP", protocol.SEP_GRID, tunes, options)
      log(f"SEP's mean neighbour purity on the tuning splits {sep_purity:.3f} (settings {sep_settings})", t0)
      best, grid = protocol.tune_refinements(fitted[shares[1]], k, tunes, options, base,
                                             faint_low=float(sc.faint_low), least_neighbour_purity=sep_purity)
      results["refinements"] = {"chosen_on": f"tuning splits of {', '.join(tune_on)}", "best": best, "grid": grid,
                                "least_neighbour_purity": {"SEP": sep_purity, "sep_settings": sep_settings},
                                "deblend": dataclasses.asdict(dataclasses.replace(base,
                                                                                  contrast=best["deblend_contrast"])),
                                "faint": {"peak": best["faint_peak"], "low": float(sc.faint_low)},
                                "edges": {"level": best["edge_level"], "peak_fraction": best["edge_peak_fraction"],
                                          "min_peak": best["edge_min_peak"]}}
    deblending = deblend.DeblendOptions(**results["refinements"]["deblend"])
    faint_options = faint_from(results["refinements"])
    edge_options = edge_from(results["refinements"])
    log(f"deblend contrast {deblending.contrast:g}, faint peak {results['refinements']['best']['faint_peak']}, "
        f"edges {edge_options} chosen on {results['refinements']['chosen_on']}", t0)
    for name in names:
      inputs = inputs_for(name)
      results["distributions"][name] = run_distribution(name, inputs, fitted, methods, k, options, deblending,
                                                        faint_options, edge_options, (args.n_tune, args.n_score),
                                                        split_seed, t0)
      json_path.write_text(json.dumps(metrics.to_json_safe(results), indent=1))
      md_path.write_text("\n".join(segment_report.protocol_lines(metrics.to_json_safe(results))))
  if not args.skip_real:
    deblending = deblend.DeblendOptions(**results["refinements"]["deblend"]) if "refinements" in results else \
      deblend.DeblendOptions.from_config(sc)
    faint_options = faint_from(results["refinements"]) if "refinements" in results else \
      faint.FaintOptions.from_config(sc)
    edge_options = edge_from(results["refinements"]) if "refinements" in results else None
    settings = {n: d["baseline_settings"] for n, d in
                {**(prior or {}).get("distributions", {}), **results["distributions"]}.items()}.get("default")
    results["real_baseline_settings"] = settings
    results["real"] = real_data.real_frame_checks(fitted, k, options, deblending, settings, out / "real",
                                                  faint_options=faint_options, edge_options=edge_options)
    log("real frames done", t0)
  results["wall_seconds"] = time.perf_counter() - t0
  json_path.write_text(json.dumps(metrics.to_json_safe(results), indent=1))
  md_path.write_text("\n".join(segment_report.protocol_lines(metrics.to_json_safe(results))))
  print(f"wrote {md_path} and {json_path} ({results['wall_seconds']:.0f}s)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
