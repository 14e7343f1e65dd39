"""Command line: python -m stargal_jax.simulate --out DIR --n-labelled N --n-unlabelled M --seed S --workers W
[--param FIELD=VALUE ...]

--param sets any `SimParams` field, e.g. --param seeing_r_median_arcsec=1.6 --param depth_mag=1
--param neighbour_density_scale=0 --param sky_residual_nmgy=0,0,0,0,0 --param resample_bands=false.
"""

import argparse
import dataclasses
import sys
import time

from stargal_jax.simulate.dataset import simulate_dataset
from stargal_jax.simulate.params import SimParams

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_value(name: str, text: str, default):
  """A --param value converted to the type of the field's default (bool, int, float or tuple of floats)."""
  text = text.strip()
  if isinstance(default, bool):
    if text.lower() in TRUE + FALSE:
      return text.lower() in TRUE
    raise ValueError(f"--param {name}={text!r}: expected true or false")
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"--param {name}={text!r}: expected an integer") from None
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"--param {name}={text!r}: expected a number") from None
  if isinstance(default, tuple):
    try:
      values = tuple(float(v) for v in text.strip("()[] ").split(",") if v.strip())
    except ValueError:
      raise ValueError(f"--param {name}={text!r}: expected comma-separated numbers") from None
    if len(values) != len(default):
      raise ValueError(f"--param {name}={text!r}: expected {len(default)} comma-separated numbers")
    return values
  raise ValueError(f"--param {name}: fields of type {type(default).__name__} cannot be set from the command line")


def params_from_assignments(assignments: list[str]) -> SimParams:
  """SimParams with FIELD=VALUE assignments applied; ValueError (one line) on any mistake."""
  defaults = SimParams()
  fields = {f.name for f in dataclasses.fields(SimParams)}
  changes = {}
  for item in assignments:
    if "=" not in item:
      raise ValueError(f"--param {item!r}: expected FIELD=VALUE")
    name, text = item.split("=", 1)
    name = name.strip()
    if name not in fields:
      raise ValueError(f"--param: unknown SimParams field {name!r}; valid: {', '.join(sorted(fields))}")
    changes[name] = parse_value(name, text, getattr(defaults, name))
  return dataclasses.replace(defaults, **changes)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Write a simulated SDSS-like data set in the study's format.")
  parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
  parser.add_argument("--n-labelled", type=int, required=True)
  parser.add_argument("--n-unlabelled", type=int, required=True)
  parser.add_argument("--seed", type=int, default=2017)
  parser.add_argument("--workers", type=int, default=1)
  parser.add_argument("--param", action="append", default=[], metavar="FIELD=VALUE",
                      help="set a SimParams field (repeatable), e.g. seeing_r_median_arcsec=1.6")
  args = parser.parse_args(argv)
  if args.n_labelled < 0 or args.n_unlabelled < 0:
    raise SystemExit("error: --n-labelled and --n-unlabelled must be >= 0")
  try:
    params = params_from_assignments(args.param)
  except ValueError as error:
    raise SystemExit(f"error: {error}") from None
  start = time.time()
  try:
    out = simulate_dataset(args.out, args.n_labelled, args.n_unlabelled, args.seed, workers=args.workers, params=params)
  except FileExistsError as error:
    raise SystemExit(f"error: {error}") from None
  print(f"wrote {args.n_labelled} labelled + {args.n_unlabelled} unlabelled cutouts to {out} "
        f"in {time.time() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
  main()
