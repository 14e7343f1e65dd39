"""host_runtime: XLA_FLAGS merging, and in fresh processes that each setting does what it claims."""

import json
import os
import platform
import subprocess
import sys

import pytest

from stargal_jax import host_runtime


def test_merged_flags_keep_the_users_values():
  assert host_runtime.merged_xla_flags("", {"a": "1", "b": "2"}) == "--a=1 --b=2"
  assert host_runtime.merged_xla_flags(" --a=5 --c ", {"a": "1", "b": "2"}) == "--a=5 --c --b=2"
  # An empty value the user set (jax's default list) still counts as set.
  assert host_runtime.merged_xla_flags("--b=", {"b": "2"}) == "--b="


# A fresh process: configure (or not), then report devices, whether the convolution went to YNNPACK, and the
# page faults of repeatedly running a jitted function whose temporaries exceed glibc's 32 MB mmap limit.
SCRIPT = r"""
import json, resource, sys
from stargal_jax import host_runtime
settings = host_runtime.configure(3) if sys.argv[1] == "configure" else {}
import jax, jax.numpy as jnp
from stargal_jax import models
x = jnp.ones((64, 64, 64, 16), jnp.float32)
# The project's stride-2 convolution: a YNNPACK fusion ('ynn_fusion') under jax's defaults.
hlo = jax.jit(models.conv_stride2).lower(x, jnp.ones((3, 3, 16, 32), jnp.float32)).compile().as_text()
# Intermediates of 64 MB each, alive together: a temp buffer far above glibc's 32 MB mmap limit.
big = jax.jit(lambda x: jnp.sum(jnp.tanh(jnp.tile(x, (4, 1, 1, 1))) * jnp.cos(jnp.tile(x, (4, 1, 1, 1))[::-1])))
for _ in range(3):
  big(x).block_until_ready()
# The steady state: the fewest faults per call over four windows of five calls (faults caused by other load on
# the machine only ever add, so the minimum is the allocator's own rate).
windows = []
for _ in range(4):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    big(x).block_until_ready()
  windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
faults = min(windows)
print(json.dumps({"devices": jax.device_count(), "ynn_convolution": "ynn_fusion" in hlo,
                  "faults_per_call": faults, **settings}))
"""


def _run(mode: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", *host_runtime.MALLOC_ENV)}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a subprocess
@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_configure_sets_devices_convolutions_and_allocator():
  plain, tuned = _run("plain"), _run("configure")
  assert plain["devices"] == 1 and tuned["devices"] == 3
  assert "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution" in tuned["xla_flags"]
  assert plain["ynn_convolution"] and not tuned["ynn_convolution"]
  assert tuned["keep_freed_memory"]
  # Measured 33.6k faults per call by default (the temporaries faulted in again every call), 2.5k once tuned.
  assert plain["faults_per_call"] > 8000, plain
  assert tuned["faults_per_call"] < 0.25 * plain["faults_per_call"], (plain, tuned)
