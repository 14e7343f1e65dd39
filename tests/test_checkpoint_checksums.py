"""checkpoint_checksums: the digests of a step directory, recorded and verified (hashlib by hand as reference)."""

import hashlib
import json

from stargal_jax import checkpoint_checksums as cc


def _step(tmp_path):
  step = tmp_path / "12"
  (step / "default" / "d").mkdir(parents=True)
  (step / "_CHECKPOINT_METADATA").write_text('{"step": 12}')
  (step / "default" / "d" / "blob").write_bytes(bytes(range(256)) * 9)
  return step


def test_recorded_digests_are_the_sha256_of_every_file(tmp_path):
  step = _step(tmp_path)
  cc.write_checksums(step)
  recorded = json.loads((step / cc.CHECKSUM_FILE).read_text())
  assert recorded["algorithm"] == "sha256"
  assert recorded["files"] == {"_CHECKPOINT_METADATA": hashlib.sha256(b'{"step": 12}').hexdigest(),
                               "default/d/blob": hashlib.sha256(bytes(range(256)) * 9).hexdigest()}
  assert cc.checksum_problem(step) is None
  assert cc.step_dirs(tmp_path) == {12: step}


def test_every_kind_of_damage_is_named(tmp_path):
  step = _step(tmp_path)
  assert cc.checksum_problem(step) == "no checksums"
  cc.write_checksums(step)
  blob = step / "default" / "d" / "blob"
  data = bytearray(blob.read_bytes())
  data[100] ^= 1
  blob.write_bytes(bytes(data))
  assert cc.checksum_problem(step) == "default/d/blob does not match its checksum"
  blob.unlink()
  assert cc.checksum_problem(step) == "missing default/d/blob"
  (step / cc.CHECKSUM_FILE).write_text("{not json")
  assert cc.checksum_problem(step).startswith(f"unreadable {cc.CHECKSUM_FILE}")
