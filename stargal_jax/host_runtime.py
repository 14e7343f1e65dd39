"""Process-level settings that make XLA:CPU train the project's conv models fast; call before jax starts.

`configure()` is what `launch.py`, the benchmarks and the notebooks call first. It changes nothing on GPU/TPU
backends. Three settings, each measured on the 2-core development VM (benchmarks/RESULTS.md, section 1):

- One XLA CPU device per core (`--xla_force_host_platform_device_count`): the batch is split over them.
- Convolutions through XLA's own (Eigen) kernels, not YNNPACK (`--xla_cpu_experimental_ynn_fusion_type=
  -individual_convolution`): jax 0.10 hands every convolution to YNNPACK by default, which ran the reference
  VAE's stride-2 convolutions 1.4-2.6x slower (forward 27.7 vs 13.7 ms, kernel gradients 43.6 vs 23.8 ms per
  batch of 128 over the four layers).
- Freed memory kept for reuse (glibc `mallopt`): XLA:CPU allocates each step's temporaries (170 MB for the
  reference VAE) with malloc, and glibc serves blocks over 32 MB with mmap and returns them to the kernel on
  free, so every step page-faulted them in again: 44k page faults and 0.076 s of kernel time per step, 22% of
  the step's CPU time. With one malloc arena, no mmap and a high trim threshold the block is reused (0 faults).

The allocator setting has a cost: with one arena the threads contend for malloc's lock, which made the
dispatch-bound stage-2 dense VAE's 16-seed study 15-25% slower (2.1-2.3 M against 2.6-2.9 M images x seeds/s)
while the conv models train 1.3-1.5x faster; and the heap keeps up to 1 GiB of freed memory. It is left out
where jax has an accelerator plugin (jax[cuda], jax[tpu]: training runs there), and when the environment sets
MALLOC_ARENA_MAX, MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_ or STARGAL_KEEP_MALLOC=1. A value the user already
put in XLA_FLAGS wins over ours.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import platform

# XLA_FLAGS the project adds on CPU hosts, by flag name.
CPU_XLA_FLAGS = {
  "xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
}

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# Free memory at the top of the heap beyond this is still returned to the kernel.
TRIM_THRESHOLD_BYTES = 1 << 30
MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "STARGAL_KEEP_MALLOC")


def merged_xla_flags(existing: str, wanted: dict[str, str]) -> str:
  """`existing` XLA_FLAGS plus each `--name=value` of `wanted` whose name `existing` does not set already."""
  present = {token.lstrip("-").split("=", 1)[0] for token in existing.split()}
  added = [f"--{name}={value}" for name, value in wanted.items() if name not in present]
  return " ".join([existing.strip(), *added]).strip()


def has_accelerator_plugin() -> bool:
  """Whether jax can find a GPU/TPU plugin here (found without importing jax)."""
  if importlib.util.find_spec("libtpu") is not None:
    return True
  return any(True for _ in importlib.metadata.entry_points(group="jax_plugins"))


def keep_freed_memory() -> bool:
  """Make glibc keep large freed blocks for reuse instead of unmapping them; True if it was applied.

  Must run before the threads that allocate (XLA's) exist: an arena limit binds only threads that have none.
  """
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  if any(name in os.environ for name in MALLOC_ENV) or has_accelerator_plugin():
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  # Worker threads would otherwise get arenas of their own, which mmap any block their 64 MB heaps can't hold.
  applied = (libc.mallopt(_M_ARENA_MAX, 1), libc.mallopt(_M_MMAP_MAX, 0),
             libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
  return all(result == 1 for result in applied)


def configure(cpu_devices: int | None = None) -> dict:
  """Set XLA_FLAGS (CPU devices, Eigen convolutions) and glibc's allocator.

  Returns `{'xla_flags': the resulting XLA_FLAGS, 'keep_freed_memory': whether glibc was tuned}`.

  `cpu_devices`: XLA CPU devices to create (default one per core). Has an effect only before jax's backend
  starts (the first jax computation or `jax.devices()`), so call it first.
  """
  wanted = {"xla_force_host_platform_device_count": str(cpu_devices or os.cpu_count() or 1), **CPU_XLA_FLAGS}
  os.environ["XLA_FLAGS"] = merged_xla_flags(os.environ.get("XLA_FLAGS", ""), wanted)
  return {"xla_flags": os.environ["XLA_FLAGS"], "keep_freed_memory": keep_freed_memory()}
