"""sdss_frames.cli: the command writes the study's formats (in-process), and runs as `python -m` (slow)."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from stargal_jax import sdss_frames as sf
from sdss_helpers import SPARSE, write_csv


def test_cli_writes_the_study_format(sparse, tmp_path, monkeypatch):
  monkeypatch.setattr(sf.cli, "load_field", lambda *args, **kwargs: sparse)
  sources = sf.detect_sources(sparse, snr=50.0)[:5]
  x = np.r_[sources["x"], 10.0]  # the last lies partly outside the frame
  y = np.r_[sources["y"], 20.0]
  ra, dec = sf.r_pixels_to_sky(sparse, x, y)
  classes = ["STAR", "GALAXY", "QSO", "STAR", "GALAXY", "STAR"]
  write_csv(tmp_path / "sky.csv", ["ra", "dec", "objID", "class", "z"],
             [[f"{a:.10f}", f"{d:.10f}", 1000 + k, c, 0.01 * k] for k, (a, d, c) in enumerate(zip(ra, dec, classes))])
  write_csv(tmp_path / "pix.csv", ["x", "y"], [[f"{a:.6f}", f"{b:.6f}"] for a, b in zip(x, y)])
  out_sky, out_pix = tmp_path / "sky", tmp_path / "pix"
  assert sf.main(["--field", "unused", "--positions", str(tmp_path / "sky.csv"), "--out", str(out_sky),
                  "--per-file", "4"]) == 0
  assert sf.main(["--field", "unused", "--positions", str(tmp_path / "pix.csv"), "--out", str(out_pix)]) == 0

  files = sorted(out_sky.glob(f"{SPARSE}_*.npy"))
  assert [f.name for f in files] == [f"{SPARSE}_000000.npy", f"{SPARSE}_000004.npy"]
  records = np.concatenate([np.load(f, allow_pickle=False) for f in files])
  assert records.dtype.names == ("objID", "image", "class", "z") and records["image"].shape == (5, 5, 64, 64)
  np.testing.assert_array_equal(records["objID"], np.arange(1000, 1005))
  np.testing.assert_array_equal(records["class"], classes[:5])
  expected, expected_noise, _ = sf.cut_cutouts(sparse, np.c_[sources["x"], sources["y"]])
  np.testing.assert_allclose(records["image"], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
  np.testing.assert_allclose(np.load(out_sky / "noise.npy", allow_pickle=False), expected_noise, rtol=1e-4)
  with open(out_sky / "cutouts.csv") as handle:
    rows = list(csv.DictReader(handle))
  assert len(rows) == 6 and rows[5]["record"] == "-1" and int(rows[5]["n_nan"]) > 0
  assert rows[4]["file"] == f"{SPARSE}_000004.npy" and rows[4]["record"] == "0" and rows[4]["noise_row"] == "4"

  unlabelled = np.concatenate([np.load(f, allow_pickle=False) for f in sorted(out_pix.glob(f"{SPARSE}_*.npy"))])
  assert unlabelled.dtype.names == ("image",) and len(unlabelled) == 5  # the study: one record per file
  np.testing.assert_allclose(unlabelled["image"], records["image"], rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.slow  # a subprocess
def test_cli_detection_mode_and_module_entry(sparse, tmp_path, monkeypatch):
  monkeypatch.setattr(sf.cli, "load_field", lambda *args, **kwargs: sparse)
  out = tmp_path / "out"
  assert sf.main(["--field", "unused", "--detect-snr", "300", "--out", str(out)]) == 0
  with open(out / "cutouts.csv") as handle:
    rows = list(csv.DictReader(handle))
  expected = sf.detect_sources(sparse, snr=300.0)
  np.testing.assert_allclose([float(r["x"]) for r in rows], expected["x"], atol=1e-4)
  written = [r for r in rows if r["record"] != "-1"]
  assert len(written) >= 3 and len(list(out.glob(f"{SPARSE}_*.npy"))) == len(written)
  first = np.load(out / written[0]["file"], allow_pickle=False)
  assert first.dtype.names == ("image",) and first["image"].shape == (1, 5, 64, 64)
  assert np.isfinite(first["image"]).all()
  assert np.load(out / "noise.npy", allow_pickle=False).shape == (len(written), 5, 64, 64)
  result = subprocess.run([sys.executable, "-m", "stargal_jax.sdss_frames", "--help"], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and "--positions" in result.stdout


def test_a_bad_field_is_one_line_and_exit_status_2(tmp_path, capsys):
  from sdss_helpers import write_synthetic_frame
  for band in "ugriz":
    write_synthetic_frame(tmp_path / "field", band, seed=1)
  broken = next((tmp_path / "field").glob("frame-i-*"))
  broken.write_bytes(broken.read_bytes()[:100])
  assert sf.main(["--field", str(tmp_path / "field"), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {broken}: not a readable bzip2") and err.count("\n") == 1
  assert not (tmp_path / "out").exists()
