"""Peak float32 FLOP/s of this machine as XLA sees it: a large jitted matmul, best of several.

  python benchmarks/peak_flops.py [--n 4096] [--repeats 5] [--devices 2]

A square n x n @ n x n float32 matmul costs 2 n^3 FLOPs. Two figures are measured: the matmul on
one XLA device, and the same matmul with its rows sharded over all the (forced) host devices; the
larger is the peak that training-step figures are compared against. Importable: `measure_peak`
(call it after jax is imported with the device count you want) and `step_flops` (FLOPs of one
compiled program from XLA's cost analysis, summed over the devices of a sharded program).
The LAST line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _best_seconds(fn, args, repeats: int) -> float:
  import jax
  jax.block_until_ready(fn(*args))  # compile + warm
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def measure_peak(n: int = 4096, repeats: int = 5) -> dict:
  """Best-of-`repeats` FLOP/s of an n x n float32 matmul: on device 0, and row-sharded over all devices."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  flops = 2.0 * n ** 3
  matmul = jax.jit(lambda a, b: a @ b)
  keys = jax.random.split(jax.random.key(0))
  device = jax.devices()[0]
  a = jax.device_put(jax.random.normal(keys[0], (n, n), jnp.float32), device)
  b = jax.device_put(jax.random.normal(keys[1], (n, n), jnp.float32), device)
  one = _best_seconds(matmul, (a, b), repeats)
  result = {"n": n, "repeats": repeats, "matmul_flops": flops,
            "one_device_seconds": round(one, 4), "one_device_gflops": round(flops / one / 1e9, 1)}
  devices = jax.devices()
  if len(devices) > 1 and n % len(devices) == 0:
    mesh = Mesh(np.asarray(devices), ("rows",))
    a_sharded = jax.device_put(a, NamedSharding(mesh, PartitionSpec("rows")))
    b_replicated = jax.device_put(b, NamedSharding(mesh, PartitionSpec()))
    every = _best_seconds(matmul, (a_sharded, b_replicated), repeats)
    result.update(all_devices=len(devices), all_devices_seconds=round(every, 4),
                  all_devices_gflops=round(flops / every / 1e9, 1))
  result["peak_gflops"] = max(result["one_device_gflops"], result.get("all_devices_gflops", 0.0))
  return result


def step_flops(compiled) -> float:
  """FLOPs of one call of a compiled program (XLA cost analysis).

  For an SPMD-partitioned program the analysis is of one partition's module, so it is multiplied
  by the number of devices the program runs on.
  """
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per module
    analysis = analysis[0]
  flops = float(analysis.get("flops", 0.0))
  devices = set()
  for sharding in _leaves(compiled.input_shardings):
    devices |= set(getattr(sharding, "device_set", ()))
  return flops * max(len(devices), 1)


def _leaves(tree):
  import jax
  return jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "device_set"))


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--n", type=int, default=4096)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--devices", type=int, default=min(2, os.cpu_count() or 1))
  args = parser.parse_args(argv)
  if args.devices > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}").strip()
  import jax
  load_before = os.getloadavg()[0]
  out = measure_peak(args.n, args.repeats)
  out.update(jax_version=jax.__version__, cpu_count=os.cpu_count(),
             load_average_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)])
  return out


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1:])))
