"""Several processes (hosts) as one JAX program: start-up, which process writes, and global arrays from host data.

Multi-controller JAX: every process runs the same code on the same host data (batches are a pure function of the
step, so every process computes the same global batch); arrays span the devices of all processes. With one
process every helper here does exactly what single-process code did before (`jax.device_put`, `np.asarray`).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(multihost: bool) -> None:
  """`jax.distributed.initialize()` when `multihost`; call it before anything else uses jax.

  TPU pods, SLURM and Open MPI are detected by jax itself. Elsewhere set JAX_COORDINATOR_ADDRESS (host:port of
  process 0, read by jax) and JAX_NUM_PROCESSES / JAX_PROCESS_ID (read here: jax 0.10 does not read them).
  """
  if not multihost:
    return
  # Cross-process collectives between CPU devices: jax 0.10's default, explicit for versions without one.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  env = {k: int(os.environ[k]) if os.environ.get(k) else None for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
  try:
    jax.distributed.initialize(num_processes=env["JAX_NUM_PROCESSES"], process_id=env["JAX_PROCESS_ID"])
  except ValueError as e:
    raise ValueError(f"--multihost: {str(e).rstrip('.')}. Outside a TPU pod, SLURM or Open MPI job, set "
                     "JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID.") from e
  print(f"[distributed] process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} "
        f"local of {jax.device_count()} global devices", flush=True)


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def is_writer() -> bool:
  """Whether this process writes outputs (process 0); every process still runs every computation."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process gets here (no-op with one process)."""
  if is_multiprocess():
    multihost_utils.sync_global_devices(name)


def mesh_devices(n: int) -> np.ndarray:
  """Devices for a 1-D mesh over an axis of length `n`: as many as divide `n`. With several processes, the same
  number from every process (a process with no device in the mesh could not take part in its programs)."""
  if not is_multiprocess():
    devices = jax.devices()
    count = max(k for k in range(1, len(devices) + 1) if n % k == 0)
    return np.asarray(devices[:count])
  processes = jax.process_count()
  per_process = [k for k in range(1, jax.local_device_count() + 1) if n % (k * processes) == 0]
  if not per_process:
    raise ValueError(f"An axis of {n} cannot be split evenly over {processes} processes; make it a multiple "
                     f"of {processes}.")
  by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(processes)]
  return np.asarray([d for devices in by_process for d in devices[:max(per_process)]])


def put(tree, sharding: jax.sharding.Sharding):
  """Places host values that are the same on every process as global arrays with `sharding`.

  One process: `jax.device_put`. Several: each process fills its own shards (`jax.make_array_from_callback`),
  without the equality check across processes that `device_put` would run.
  """
  if not is_multiprocess():
    return jax.device_put(tree, sharding)

  def one(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    x = np.asarray(x)
    dtype = jax.dtypes.canonicalize_dtype(x.dtype)  # float64 -> float32 without x64, as device_put does.
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index].astype(dtype), dtype=dtype)

  return jax.tree.map(one, tree)


def to_host(tree):
  """Numpy copies of (global) arrays. Replicated arrays are read locally; sharded global arrays are gathered
  from every process (`process_allgather`), which every process must call in the same order."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(one, tree)
