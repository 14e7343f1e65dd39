"""Two local processes (2 CPU devices each) as one JAX program against one process with the same 4 devices:
data-parallel training, resume from the multi-process checkpoint, prediction, a seed study, and `launch.py`."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, os, sys
from stargal_jax import distributed
distributed.initialize("JAX_NUM_PROCESSES" in os.environ)
import jax, ml_collections, numpy as np
from stargal_jax import models, train
workdir, steps, seeds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
codes = np.tanh(np.random.default_rng(0).normal(size=(64, 30))).astype(np.float32)
cfg = ml_collections.ConfigDict(dict(steps=steps, batch_size=16, learning_rate=1e-2, grad_clip=10.0,
                                     checkpoint_every=4, log_every=1))
loss, options = dict(recon_mse=1.0, kl=0.2), dict(kl=dict(units=(0,)))
build = lambda k: models.build_model("dense_vae", dict(in_dim=30, hidden=30, latent_dim=2, eps_scale=0.1), k)
result = train.train(build(jax.random.key(0)), cfg, loss, options, lambda step: {"x": codes[(step * 16) % 64:][:16]},
                     jax.random.key(1), workdir + "/single", "single")
flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(distributed.to_host(t))]).tolist()
out = {"process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
       "data_axis": int(train.data_mesh(16).devices.size), "params": flat(result.params),
       "history": [{k: v for k, v in h.items() if k != "images_per_second"} for h in result.history],
       "mu": train.predict_in_batches(result, lambda idx: codes[idx], 40, batch_size=16)["mu"].tolist()}
if seeds:
  batches = lambda step: {"x": np.stack([np.roll(codes, s, 0)[(step * 16) % 64:][:16] for s in range(seeds)])}
  study = train.train_seeds(build, jax.random.split(jax.random.key(2), seeds), cfg, loss, options, batches,
                            workdir + "/study", "study")
  out.update(study=flat(study.params), seed_axis=int(train.seed_mesh(seeds).devices.size),
             study_mu=train.predict_seeds_in_batches(study, lambda idx: codes[idx], 40, 16)["mu"].tolist())
print("RESULT " + json.dumps(out))
"""


def _gloo_available() -> bool:
  try:
    from jax._src.lib import _jax
  except ImportError:
    return True  # Let the run itself tell.
  return hasattr(_jax, "make_gloo_tcp_collectives")


pytestmark = [pytest.mark.slow,  # several processes: the full run only
              pytest.mark.skipif(not _gloo_available(), reason="this jaxlib has no gloo CPU collectives")]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  return dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **extra)


def _two_processes(args: list[str], logs: Path, timeout=240) -> list[str]:
  """Runs `args` as processes 0 and 1 of one JAX program (coordinator on 127.0.0.1); returns their outputs."""
  logs.mkdir(parents=True, exist_ok=True)
  port = _free_port()
  procs = []
  for i in range(2):
    with open(logs / f"process_{i}.log", "w") as log:
      env = _env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
      procs.append(subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT))
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = [(logs / f"process_{i}.log").read_text() for i in range(2)]
  for i, (code, text) in enumerate(zip(codes, texts)):
    assert code == 0, f"process {i} exited with {code}:\n{text[-3000:]}"
  return texts


def _result(text: str) -> dict:
  return json.loads([line for line in text.splitlines() if line.startswith("RESULT ")][-1][len("RESULT "):])


def test_two_processes_train_resume_and_predict_like_one_process_with_the_same_devices(tmp_path):
  # Two processes: 4 steps (checkpoint at step 4), then the same run to 8 steps resumes from it.
  _two_processes(["-c", SCRIPT, str(tmp_path / "multi"), "4", "0"], tmp_path / "logs_4")
  texts = _two_processes(["-c", SCRIPT, str(tmp_path / "multi"), "8", "4"], tmp_path / "logs_8")
  multi = [_result(t) for t in texts]
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "one"), "8", "4"], env=_env(4), cwd=REPO,
                        capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  one = _result(proc.stdout)

  assert [m["process"] for m in multi] == [0, 1] and all(m["processes"] == 2 for m in multi)
  assert one["processes"] == 1 and one["devices"] == multi[0]["devices"] == 4
  assert multi[0]["data_axis"] == 4 and multi[0]["seed_axis"] == 4  # The batch and the seeds span both processes.
  for text in texts:
    assert "[single] resumed from checkpoint at step 4" in text
  assert [h["step"] for h in multi[0]["history"]] == [5, 6, 7, 8]  # Only the steps after the checkpoint ran.
  for m in multi:  # Both processes hold the same global result, equal to one process's.
    for k in ("params", "mu", "study", "study_mu"):
      np.testing.assert_allclose(m[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for h_multi, h_one in zip(m["history"], one["history"][4:], strict=True):
      assert h_multi.keys() == h_one.keys()
      np.testing.assert_allclose([h_multi[k] for k in h_one], list(h_one.values()), rtol=1e-5, err_msg=str(h_one))


def test_launch_multihost_smoke(smoke_cache, tmp_path):
  """`launch.py --multihost` end to end on 2 processes: both finish with the same numbers; process 0 writes."""
  workdir = tmp_path / "run"
  texts = _two_processes(["launch.py", "--multihost", "--config=configs/cvae.py:smoke", f"--workdir={workdir}",
                          f"--config.data.cache_dir={smoke_cache}", "--config.eval.plots=False"], tmp_path / "logs")
  results = [[line for line in t.splitlines() if line.startswith("[result]")] for t in texts]
  assert all(len(r) == 1 for r in results), texts[0][-3000:]
  strip_time = lambda line: line.split("|")[:2]  # The wall time may differ between processes.
  assert strip_time(results[0][0]) == strip_time(results[1][0])
  assert "process 1 of 2: 2 local of 4 global devices" in texts[1]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert len(metrics["devices"]) == 4 and 0.0 <= metrics["auc"] <= 1.0
  assert f"auc={metrics['auc']:.4f}" in results[0][0]
  assert {p.name for p in (workdir / "checkpoints").iterdir()} == {"ae", "vae"}
