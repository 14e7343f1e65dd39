"""Simulator throughput: cutouts per second on one core, and a whole data set with worker processes.

Per-core rate is measured in-process on CPU time (robust when the machine is shared) and on wall
time; the data-set rate includes writing files and truth, and worker start-up. Prints JSON.

  python benchmarks/simulate_speed.py [--n 400] [--n-dataset 600] [--workers 2]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from stargal_jax.simulate import SIM_VERSION, simulate_cutouts, simulate_dataset


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=400, help="cutouts for the single-core rate")
  parser.add_argument("--n-dataset", type=int, default=600, help="objects (half labelled) for the data-set rate")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--seed", type=int, default=2017)
  args = parser.parse_args()

  simulate_cutouts(5, args.seed)  # imports, caches
  wall, cpu = time.perf_counter(), time.process_time()
  simulate_cutouts(args.n, args.seed + 1)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    half = args.n_dataset // 2
    simulate_dataset(Path(tmp) / "set", half, args.n_dataset - half, args.seed, workers=args.workers)
    dataset_wall = time.perf_counter() - start

  print(json.dumps({
    "simulator_version": SIM_VERSION,
    "cutouts": args.n,
    "per_core_cutouts_per_s_cpu": round(args.n / cpu, 1),
    "per_core_cutouts_per_s_wall": round(args.n / wall, 1),
    "dataset_objects": args.n_dataset,
    "dataset_workers": args.workers,
    "dataset_cutouts_per_s_wall": round(args.n_dataset / dataset_wall, 1),
    "cpu_count": os.cpu_count(),
    "load_average_1min": round(os.getloadavg()[0], 2),
  }))


if __name__ == "__main__":
  main()
