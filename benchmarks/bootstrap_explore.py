"""Settings of the bootstrapped design, compared on one data distribution (choose here, report elsewhere).

For each variant (`--variant name:key=value,key=value`, keys relative to the config, e.g.
`bootstrap.degrade.shrink_exponent_max=0`), trains the `bootstrap` pipeline on the unlabelled set and prints the
label-free AUC on the labelled set, overall and per r bin, beside the classical baselines (computed once and
cached in --workdir). With simulator truth for the unlabelled set, also the pseudo-labels' purity (a diagnostic:
labels are read only for it, never used by the design).

  python benchmarks/bootstrap_explore.py --workdir /tmp/bs/explore --sim faint_fraction=1.0,seeing_r_median_arcsec=1.4 \
      --variant base: --variant noshrink:bootstrap.degrade.shrink_exponent_max=0
"""

import argparse
import json
import sys
import time
from pathlib import Path

from stargal_jax import host_runtime

host_runtime.configure()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from stargal_jax import inputs as inputs_lib  # noqa: E402
from stargal_jax import metrics  # noqa: E402
from stargal_jax.classify import bootstrap, evaluate, scoring, supervised_reference  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import bootstrap as bootstrap_config  # noqa: E402


def _value(text: str):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def _apply(config, assignments: str) -> None:
  for item in filter(None, assignments.split(",")):
    key, value = item.split("=", 1)
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[last] = type(node[last])(_value(value)) if not isinstance(node[last], (tuple, list)) else tuple(_value(value))


def _unlabelled_truth(inputs) -> np.ndarray | None:
  """Truth class codes of the unlabelled store's rows (simulated data only), or None."""
  root = Path(inputs.source.split("(")[-1].rstrip(")")) if "embedded simulator" in inputs.source else None
  path = root / "truth" / "unlabelled_truth.npz" if root else None
  if path is None or not path.exists():
    return None
  with np.load(path, allow_pickle=False) as f:
    truth = {k: f[k] for k in ("file", "record", "label")}
  row = {(Path(str(a)).name, int(b)): i for i, (a, b) in enumerate(zip(truth["file"], truth["record"]))}
  store = inputs.unlabelled
  return np.array([truth["label"][row[(Path(store.files[int(a)]).name, int(b))]]
                   for a, b in zip(store.index["file"], store.index["record"])])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--sim", default="", help="simulator overrides, key=value,...")
  parser.add_argument("--data", default="", help="config.data overrides, key=value,...")
  parser.add_argument("--variant", action="append", default=[], help="name:key=value,...")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--reference", default=None, help="also the supervised CNN reference, with these "
                      "config.supervised_cnn overrides (key=value,...; '' for the defaults)")
  args = parser.parse_args()
  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  base = bootstrap_config.get_config("no_reference")
  _apply(base.data.sim_params, args.sim)
  _apply(base.data, args.data)
  inputs = inputs_lib.load_inputs(base.data, seed=base.seed)
  print(f"[data] {inputs.source}: {len(inputs.unlabelled)} unlabelled, {len(inputs.labelled)} labelled", flush=True)
  measured = workdir / "measurements.npz"
  if measured.exists():
    with np.load(measured, allow_pickle=False) as f:
      measurements = {k: f[k] for k in f.files}
  else:
    measurements = scoring.image_measurements(inputs.labelled)
    np.savez(measured, **measurements)
  is_galaxy = evaluate.is_galaxy_of(inputs.labelled)
  mag_bins = tuple(base.data.mag_bins)

  def row(name, score):
    m = metrics.classification_metrics(is_galaxy, score, base.data.star_fraction, measurements["r_mag"], mag_bins)
    return {"name": name, "auc": m["auc"], "by_mag": [b["auc"] for b in m["by_mag"]], "accuracy": m["accuracy"]}

  rows = [row(k[len("baseline_"):], v) for k, v in measurements.items() if k.startswith("baseline_")]
  if args.reference is not None:
    reference = bootstrap_config.get_config()
    _apply(reference.supervised_cnn, args.reference)
    t0 = time.perf_counter()
    scores = supervised_reference.out_of_fold_scores(
        reference.supervised_cnn, inputs.labelled, is_galaxy, inputs.normalizer, workdir / "reference",
        jax.random.fold_in(jax.random.key(args.seed), 12), int(reference.eval.eval_batch_size))
    rows.append(dict(row("supervised CNN", scores), seconds=time.perf_counter() - t0, assignments=args.reference))
    print(json.dumps(rows[-1]), flush=True)
  truth = _unlabelled_truth(inputs)
  for spec in args.variant or ["base:"]:
    name, assignments = spec.split(":", 1)
    config = bootstrap_config.get_config("no_reference")
    _apply(config.data.sim_params, args.sim)
    _apply(config.data, args.data)
    _apply(config, assignments)
    t0 = time.perf_counter()
    bright = bootstrap.bright_end(inputs.unlabelled, config.bootstrap.pseudo, config.data.cache_dir)
    purity = {}
    if truth is not None:
      true_galaxy = truth[bright.indices] == 1
      said_galaxy = bright.labels == bootstrap.PSEUDO_GALAXY
      purity = {"galaxy_purity": float(np.mean(true_galaxy[said_galaxy])),
                "star_purity": float(np.mean(~true_galaxy[~said_galaxy])),
                "n_star": int((~said_galaxy).sum()), "n_galaxy": int(said_galaxy.sum())}
    out = bootstrap.train_bootstrap(config, inputs, workdir / name, jax.random.key(args.seed))
    result = row(f"bootstrap[{name}]", out["latents"][:, 0])
    result.update(purity=purity, seconds=time.perf_counter() - t0, assignments=assignments)
    rows.append(result)
    print(json.dumps(result), flush=True)
  print("\n| score | AUC | r<19 | 19-21 | >=21 | accuracy |\n|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['name']} | {r['auc']:.4f} | " + " | ".join(f"{a:.4f}" for a in r["by_mag"]) + f" | {r['accuracy']:.4f} |")
  (workdir / f"results-{int(time.time())}.json").write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
  main()
