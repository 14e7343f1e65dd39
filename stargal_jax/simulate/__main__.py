"""Command line: python -m stargal_jax.simulate --out DIR --n-labelled N --n-unlabelled M --seed S --workers W"""

import argparse
import time

from stargal_jax.simulate.dataset import simulate_dataset


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Write a simulated SDSS-like data set in the study's format.")
  parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
  parser.add_argument("--n-labelled", type=int, required=True)
  parser.add_argument("--n-unlabelled", type=int, required=True)
  parser.add_argument("--seed", type=int, default=2017)
  parser.add_argument("--workers", type=int, default=1)
  args = parser.parse_args(argv)
  start = time.time()
  out = simulate_dataset(args.out, args.n_labelled, args.n_unlabelled, args.seed, workers=args.workers)
  print(f"wrote {args.n_labelled} labelled + {args.n_unlabelled} unlabelled cutouts to {out} "
        f"in {time.time() - start:.1f} s")


if __name__ == "__main__":
  main()
