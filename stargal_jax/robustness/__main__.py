"""`python -m stargal_jax.robustness --config SPEC[=SEEDS] ... --distributions all --size full --out DIR`."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from stargal_jax import host_runtime


def parse_config(text: str, default_seeds: int) -> tuple[str, int]:
  """'cvae.py:study=20' -> ('cvae.py:study', 20); no '=': the default number of seeds."""
  spec, sep, seeds = text.rpartition("=")
  if not sep:
    return text, default_seeds
  if not seeds.isdigit():
    raise argparse.ArgumentTypeError(f"--config {text!r}: the number of seeds after '=' must be a whole number")
  return spec, int(seeds)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m stargal_jax.robustness", description=__doc__)
  parser.add_argument("--config", action="append", required=True, metavar="SPEC[=SEEDS]",
                      help="a config file (path or name under configs/) with its :arguments, optionally =seeds; "
                      "repeat for several, e.g. --config cvae.py=20 --config cvae.py:study=20")
  parser.add_argument("--distributions", default="all",
                      help="comma-separated names of stargal_jax.shifts.DISTRIBUTIONS and real_sdss, or 'all'")
  parser.add_argument("--size", default="full", help="full (the reported tables) | small (quick checks) | smoke")
  parser.add_argument("--seeds", type=int, default=1, help="seeds of a --config without =SEEDS")
  parser.add_argument("--out", required=True, help="output folder: cells/, robustness_<size>.md and .json")
  parser.add_argument("--table-only", action="store_true", help="only rewrite the tables from the finished cells")
  args = parser.parse_args(argv)
  host_runtime.configure()  # before jax starts (the protocol imports it below)
  from stargal_jax.robustness import protocol
  try:
    configs = [parse_config(c, args.seeds) for c in args.config]
    distributions = (protocol.all_distributions() if args.distributions == "all"
                     else [d.strip() for d in args.distributions.split(",") if d.strip()])
    protocol.check_request(configs, distributions, args.size)
  except (argparse.ArgumentTypeError, ValueError, KeyError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  protocol.run_protocol(args.out, configs, distributions, args.size, table_only=args.table_only)
  return 0


if __name__ == "__main__":
  sys.exit(main())
