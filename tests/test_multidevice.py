"""One device against eight simulated CPU devices: data-parallel training and sharded seed studies agree."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # subprocesses: the full run only


SCRIPT = r"""
import json, sys, tempfile
import jax, ml_collections, numpy as np
from stargal_jax import models, train

codes = np.tanh(np.random.default_rng(0).normal(size=(64, 30))).astype(np.float32)
cfg = ml_collections.ConfigDict(dict(steps=5, batch_size=16, learning_rate=1e-2, grad_clip=10.0,
                                     checkpoint_every=100, log_every=100))
loss, options = dict(recon_mse=1.0, kl=0.2), dict(kl=dict(units=(0,)))
build = lambda k: models.build_model("dense_vae", dict(in_dim=30, hidden=30, latent_dim=2, eps_scale=0.1), k)
batch = lambda step: {"x": codes[(step * 16) % 64:][:16]}
with tempfile.TemporaryDirectory() as d:
  single = train.train(build(jax.random.key(0)), cfg, loss, options, batch, jax.random.key(1), d + "/a", "a")
  keys = jax.random.split(jax.random.key(2), 8)
  study = train.train_seeds(build, keys, cfg, loss, options,
                            lambda step: {"x": np.stack([np.roll(codes, s, 0)[(step * 16) % 64:][:16] for s in range(8)])},
                            d + "/b", "b")
flat = lambda t: np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(t)]).tolist()
mesh = train.data_mesh(16)
print(json.dumps({"devices": len(jax.devices()), "data_axis": int(mesh.devices.size),
                  "seed_axis": int(train.seed_mesh(8).devices.size), "single": flat(single.params),
                  "study": flat(study.params)}))
"""


def _run(devices: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one():
  one, eight = _run(1), _run(8)
  assert one["devices"] == 1 and eight["devices"] == 8
  assert eight["data_axis"] == 8 and eight["seed_axis"] == 8  # The batch and the seeds really are split.
  np.testing.assert_allclose(eight["single"], one["single"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(eight["study"], one["study"], rtol=1e-4, atol=1e-5)
