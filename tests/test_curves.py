"""curves: a stage's history as TensorBoard events (read back by hand: TFRecord framing + the Event protobuf), its
merge on resume, and the per-stage figures."""

import json
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from stargal_jax import curves


def read_event_scalars(path) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} of a TensorBoard event file, parsed without tensorboardX's writer: each record is a
  little-endian uint64 length, a uint32 CRC, the Event protobuf bytes, a uint32 CRC."""
  data = path.read_bytes()
  scalars, offset, events = {}, 0, 0
  while offset < len(data):
    (length,) = struct.unpack_from("<Q", data, offset)
    payload = data[offset + 12:offset + 12 + length]
    offset += 12 + length + 4
    event = event_pb2.Event.FromString(payload)
    events += 1
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  assert offset == len(data) and events > 0
  return scalars


def history(steps, offset=0.0):
  return [{"step": s, "total": 10.0 / s + offset, "kl": 0.5 + offset, "grad_norm": 2.0 * s,
           "images_per_second": 1000.0 + s} for s in steps]


def test_a_stage_is_written_as_json_and_tensorboard_scalars(tmp_path):
  logged = history([10, 20, 30])
  directory = curves.record_stage(tmp_path, "vae", logged)
  assert directory == tmp_path / "tensorboard" / "vae"
  record = json.loads((directory / "history.json").read_text())
  assert record == {"stage": "vae", "num_seeds": 1, "history": logged}
  (event_file,) = directory.glob("events.out.tfevents.*")
  scalars = read_event_scalars(event_file)
  assert set(scalars) == {"loss/total", "loss/kl", "optim/grad_norm", "speed/images_per_second"}
  for key, tag in (("total", "loss/total"), ("grad_norm", "optim/grad_norm"),
                   ("images_per_second", "speed/images_per_second")):
    assert [s for s, _ in scalars[tag]] == [10, 20, 30]
    np.testing.assert_allclose([v for _, v in scalars[tag]], [e[key] for e in logged], rtol=1e-6)  # float32


def test_a_resumed_stage_continues_one_curve(tmp_path):
  curves.record_stage(tmp_path, "ae", history([10, 20, 30]))
  # Killed after logging step 30, resumed from the checkpoint at step 20: it logs 30 and 40 again.
  curves.record_stage(tmp_path, "ae", history([30, 40], offset=1.0))
  record = curves.read_history(tmp_path, "ae")
  assert [e["step"] for e in record["history"]] == [10, 20, 30, 40]
  assert record["history"][2]["kl"] == 1.5 and record["history"][1]["kl"] == 0.5  # the resumed run's step 30
  (event_file,) = (tmp_path / "tensorboard" / "ae").glob("events.out.tfevents.*")  # one file, rewritten
  assert [s for s, _ in read_event_scalars(event_file)["loss/kl"]] == [10, 20, 30, 40]


def test_nothing_is_written_for_a_restored_stage(tmp_path):
  assert curves.record_stage(tmp_path, "vae", []) is None
  assert not (tmp_path / "tensorboard").exists()
  assert curves.merge_history([{"step": 1, "a": 1.0}], []) == [{"step": 1, "a": 1.0}]


def test_tags_group_loss_optimiser_and_speed():
  assert [curves.scalar_tag(k) for k in ("recon_mse", "critic_loss", "grad_norm", "images_per_second")] == [
      "loss/recon_mse", "loss/critic_loss", "optim/grad_norm", "speed/images_per_second"]


def test_one_figure_per_recorded_stage(tmp_path):
  curves.record_stage(tmp_path, "ae", history([1, 2, 3]))
  curves.record_stage(tmp_path, "vae_seeds", history([1, 2]), num_seeds=4)
  figures = curves.write_curve_figures(tmp_path)
  assert figures == {"training curves: ae": "plots/curves_ae.png", "training curves: vae_seeds": "plots/curves_vae_seeds.png"}
  assert all((tmp_path / p).stat().st_size > 1000 for p in figures.values())
  assert curves.recorded_stages(tmp_path / "nowhere") == []
  with pytest.raises(ValueError, match="empty history"):
    curves.plots.plot_training_curves([], tmp_path / "x.png")
