"""Purity of the bootstrap's pseudo-labels against the simulator's truth, per data distribution and rule.

The pseudo-labels (`classify.bootstrap.measure_set`) are label-free; the simulator's truth of the unlabelled set
is read here only to say how pure they are (a diagnostic, never used by the design). One row per distribution
(`stargal_jax.shifts`) and rule (a `configs/bootstrap.py` argument list, e.g. `set_psf` or `set_psf,galaxy_cut`, or
'base' for the defaults (seeing-aware galaxies), optionally followed by `:key=value,...` overrides relative to the config):

  python benchmarks/pseudo_label_purity.py --dist hard --dist default \\
      --rule set_psf --rule set_psf,galaxy_cut --rule base --rule q0.9=base:bootstrap.pseudo.seeing_quantile=0.9

Prints a markdown table: distribution, rule, pseudo-stars (purity), pseudo-galaxies (purity), the set's true
galaxy share, the seeing scale the rule measured (seeing-aware rules only) and the wall seconds of the measurement.
Data: 1000 labelled + 2000 unlabelled cutouts of the simulator (seed 2017) unless --n-labelled/--n-unlabelled.
"""

import argparse
import sys
import time
from pathlib import Path

from stargal_jax import host_runtime

host_runtime.configure()

import numpy as np  # noqa: E402

from stargal_jax import inputs as inputs_lib  # noqa: E402
from stargal_jax import shifts  # noqa: E402
from stargal_jax.classify import bootstrap  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bootstrap_explore import _apply, _unlabelled_truth  # noqa: E402
from configs import bootstrap as bootstrap_config  # noqa: E402

GALAXY = 1  # simulator truth class code (formats.CLASS_CODES); stars and QSOs are the rest


def rule_config(rule: str, n_labelled: int, n_unlabelled: int, distribution: str):
  """The config of a rule spec 'NAME=ARGS:OVERRIDES' (NAME optional), ARGS the config arguments or 'base'."""
  spec = rule.split("=", 1)[1] if "=" in rule.split(":", 1)[0] else rule
  arguments, _, overrides = spec.partition(":")
  config = bootstrap_config.get_config(",".join(["no_reference"] + [a for a in arguments.split(",")
                                                                     if a and a != "base"]))
  config.data.default_n_labelled, config.data.default_n_unlabelled = n_labelled, n_unlabelled
  shifts.apply_to_config(config, distribution)
  _apply(config, overrides)
  return config


def rule_name(rule: str) -> str:
  head = rule.split(":", 1)[0]
  return head.split("=", 1)[0] if "=" in head else rule


def purity(truth: np.ndarray, bright: bootstrap.BrightEnd, code: int) -> tuple[int, float]:
  rows = bright.indices[bright.labels == code]
  is_galaxy = truth[rows] == GALAXY
  share = float(np.mean(is_galaxy if code == bootstrap.PSEUDO_GALAXY else ~is_galaxy)) if rows.size else float("nan")
  return int(rows.size), share


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dist", action="append", default=[], help="a distribution of stargal_jax.shifts")
  parser.add_argument("--rule", action="append", default=[], help="[NAME=]ARGS[:key=value,...]")
  parser.add_argument("--n-labelled", type=int, default=1000)
  parser.add_argument("--n-unlabelled", type=int, default=2000)
  args = parser.parse_args()
  print("| distribution | rule | pseudo-stars (purity) | pseudo-galaxies (purity) | true galaxy share | "
        "seeing scale | wall s |")
  print("|---|---|---|---|---|---|---|")
  for distribution in args.dist or ["hard"]:
    stores = None
    for rule in args.rule or ["base"]:
      config = rule_config(rule, args.n_labelled, args.n_unlabelled, distribution)
      if stores is None:
        stores = inputs_lib.open_stores(config.data)
        truth = _unlabelled_truth(stores)
        if truth is None:
          sys.exit(f"{distribution}: no simulator truth beside {stores.source}")
      start = time.perf_counter()
      bright = bootstrap.measure_set(stores.unlabelled, config.bootstrap.pseudo)
      wall = time.perf_counter() - start
      n_star, star_purity = purity(truth, bright, bootstrap.PSEUDO_STAR)
      n_galaxy, galaxy_purity = purity(truth, bright, bootstrap.PSEUDO_GALAXY)
      scale = bright.summary.get("seeing_scale")
      print(f"| {distribution} | {rule_name(rule)} | {n_star} ({star_purity:.3f}) | {n_galaxy} ({galaxy_purity:.3f}) "
            f"| {np.mean(truth == GALAXY):.3f} | {'-' if scale is None else f'{scale:.3f}'} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
  main()
