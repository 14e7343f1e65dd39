"""`python -m stargal_jax.predict`: user mistakes are one line; on a finished run (slow) the catalogue of its own
labelled set reproduces predictions.npz exactly (single run and seed study), and a real field goes end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from stargal_jax import catalogue, default_data
from stargal_jax.data import formats
from stargal_jax.predict import cli

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
  """(exit status, stdout, stderr lines) of the command run in this process."""
  try:
    status = cli.main([str(a) for a in argv])
  except SystemExit as stop:  # argparse's own exits (--help, usage errors)
    status = stop.code
  out, err = capsys.readouterr()
  return status, out, [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def classification_dir(tmp_path):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text(json.dumps({"pipeline": "segmentation", "num_seeds": 1}))
  return tmp_path / "run"


@pytest.mark.parametrize("argv, message", [
    (["--run", "/nonexistent", "--cutouts", "x", "--out", "o.fits"], "no config.json"),
    (["--run", "r", "--cutouts", "x", "--positions", "p.csv", "--out", "o.fits"], "--positions needs --field"),
    (["--run", "r", "--cutouts", "x", "--field", "f", "--out", "o.fits"], "not allowed with argument"),
    (["--run", "r", "--field", "f", "--out", "o.fits", "--format", "votable"], "invalid choice: 'votable'"),
    (["--run", "r", "--field", "f", "--positions", "p.csv", "--detect-snr", "5", "--out", "o"], "apply to detections"),
    (["--run", "r", "--out", "o.fits"], "one of the arguments --cutouts --field is required"),
])
def test_mistakes_are_one_line(capsys, argv, message):
  status, _, err = run_cli(capsys, *argv)
  assert status == 2 and len(err) == 1 and message in err[0] and err[0].startswith("error: ")


def test_a_segmentation_run_and_a_missing_field_are_refused(capsys, classification_dir, tmp_path):
  status, _, err = run_cli(capsys, "--run", classification_dir, "--field", tmp_path, "--out", tmp_path / "c.fits")
  assert status == 2 and len(err) == 1 and "is a segmentation run: it has no classifier" in err[0]
  status, _, err = run_cli(capsys, "--run", classification_dir, "--field", tmp_path / "no", "--out", "c.fits")
  assert status == 2 and len(err) == 1 and "not a folder" in err[0]


def test_help_says_the_score_is_relative_to_the_set(capsys):
  status, out, _ = run_cli(capsys, "--help")
  assert status == 0
  text = " ".join(out.split())
  assert "The score is relative to the set scored" in text and "fewer than 50 objects are refused" in text


def test_positions_csv(tmp_path):
  path = tmp_path / "p.csv"
  path.write_text("objID, ra ,dec\n7,10.5,-1.25\n8,10.6,-1.5\n")
  positions, coords, objid = cli.read_positions(path)
  assert coords == "sky" and positions.tolist() == [[10.5, -1.25], [10.6, -1.5]] and objid.tolist() == [7, 8]
  path.write_text("x,y\n1,2\n")
  assert cli.read_positions(path)[1:] == ("pixel", None)
  path.write_text("a,b\n1,2\n")
  with pytest.raises(cli.UserError, match="need columns ra,dec or x,y; found \\['a', 'b'\\]"):
    cli.read_positions(path)


def test_cutouts_kind_and_an_sdss_frames_folder(tmp_path):
  images = np.zeros((2, 5, 64, 64), np.float32)
  formats.write_labelled(tmp_path / "f_000000.npy", [1, 2], images, ["STAR", "GALAXY"], [0.0, 0.1])
  np.save(tmp_path / "noise.npy", images)  # sdss_frames writes its noise maps beside the cutouts
  (tmp_path / "cutouts.csv").write_text("index,field,x,y,ra,dec,n_nan,file,record,noise_row\n"
                                        "0,F,100.5,200.5,10.0,1.0,0,f_000000.npy,0,0\n"
                                        "1,F,300.5,400.5,10.1,1.1,0,f_000000.npy,1,1\n2,F,5,5,9,1,12,,-1,-1\n")
  assert cli.cutouts_kind(tmp_path / "f_000000.npy") == "labelled"
  files, provenance = cli.cutout_paths(str(tmp_path))
  assert files == [tmp_path / "f_000000.npy"] and provenance[("f_000000.npy", 1)]["ra"] == "10.1"
  formats.write_unlabelled(tmp_path / "u.npy", images)
  assert cli.cutouts_kind(tmp_path / "u.npy") == "unlabelled"
  with pytest.raises(formats.DataFormatError, match="plain dtype"):
    cli.cutouts_kind(tmp_path / "noise.npy")


def test_crowded_window_by_brute_force():
  rng = np.random.default_rng(1)
  x, y = np.r_[rng.uniform(0, 2048, 50), rng.uniform(1500, 1700, 30)], np.r_[rng.uniform(0, 1489, 50), rng.uniform(900, 1000, 30)]
  x0, x1, y0, y1 = cli.crowded_window(x, y, (1489, 2048))
  count = lambda a, b: np.sum((x >= a) & (x < a + 300) & (y >= b) & (y < b + 220))
  assert count(x0, y0) == max(count(a, b) for a in range(0, 1749, 20) for b in range(0, 1270, 20))
  assert (x1 - x0, y1 - y0) == (300, 220)


@pytest.mark.slow  # a subprocess
def test_the_module_runs_and_fails_on_one_line(tmp_path):
  done = subprocess.run([sys.executable, "-m", "stargal_jax.predict", "--run", str(tmp_path), "--cutouts",
                         str(tmp_path), "--out", str(tmp_path / "c.fits")], capture_output=True, text=True,
                        cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert done.stderr.strip().count("\n") == 0 and "no config.json" in done.stderr


# --- on finished runs (slow: each trains a smoke run) ---

def smoke_run(cache, workdir, **overrides):
  from conftest import load_config
  from stargal_jax import experiment
  config = load_config("cvae")
  config.data.cache_dir = cache
  config.eval.plots = False
  for key, value in overrides.items():
    setattr(config, key, value)
  experiment.run(config, workdir)
  sim = default_data.ensure_default_data(Path(cache), config.data.default_n_labelled, config.data.default_n_unlabelled,
                                         config.data.default_seed)
  return config, sim.labelled_dir


@pytest.fixture(scope="module")
def single_run(smoke_cache, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("single_run")
  config, labelled = smoke_run(smoke_cache, workdir)
  return workdir, labelled


@pytest.mark.slow
def test_own_labelled_set_reproduces_predictions_exactly(single_run, capsys, tmp_path):
  workdir, labelled = single_run
  status, out, err = run_cli(capsys, "--run", workdir, "--cutouts", labelled, "--out", tmp_path / "c.ecsv")
  assert status == 0, err
  table = catalogue.read_catalogue(tmp_path / "c.ecsv")
  saved = np.load(workdir / "predictions.npz", allow_pickle=False)
  np.testing.assert_array_equal(table["objID"], saved["objID"])
  np.testing.assert_array_equal(table["score"], saved["score"])
  np.testing.assert_array_equal(table["class"], saved["pred"])
  job_table = catalogue.read_catalogue(workdir / "catalogue.fits")  # the job's own, beside predictions.npz
  for name in ("score", "score_quantile", "class", "r_mag", "mag_u", "concentration", "psf_minus_cmodel",
               "psf_minus_cmodel_signif", "n_nonfinite"):
    np.testing.assert_array_equal(np.asarray(table[name]), np.asarray(job_table[name]), err_msg=name)
  assert "eval_label" in job_table.colnames and "eval_label" not in table.colnames
  assert table.meta["SEGMAP"] == "sep" and table.meta["DATATYPE"] == "labelled"
  assert table.meta["FINGERPR"] == "not recorded" and table.meta["RUNDIR"] == str(workdir.resolve())

  few = sorted(Path(labelled).glob("*.npy"))[:10]
  status, _, err = run_cli(capsys, "--run", workdir, "--cutouts", f"{few[0].parent}/{few[0].name[:-5]}*.npy",
                           "--out", tmp_path / "few.fits")
  assert status == 2 and len(err) == 1 and "needs at least 50" in err[0]


@pytest.mark.slow
def test_seed_study_gives_every_seed_and_the_consensus(smoke_cache, capsys, tmp_path):
  from stargal_jax.classify import scoring
  workdir = tmp_path / "study"
  _, labelled = smoke_run(smoke_cache, workdir, num_seeds=2, seed_scope="stage2")
  status, _, err = run_cli(capsys, "--run", workdir, "--cutouts", labelled, "--out", tmp_path / "s.fits")
  assert status == 0, err
  table = catalogue.read_catalogue(tmp_path / "s.fits")
  saved = np.load(workdir / "predictions.npz", allow_pickle=False)
  for s in range(2):
    np.testing.assert_array_equal(table[f"score_s{s:03d}"], saved["score"][s])
    np.testing.assert_array_equal(table[f"class_s{s:03d}"], saved["pred"][s])
  np.testing.assert_allclose(table["score"], scoring.consensus_score(saved["score"]), rtol=1e-6)
  assert table.meta["NSEEDS"] == 2


@pytest.mark.slow
def test_a_real_field_end_to_end(single_run, sdss_frames_dir, capsys, tmp_path):
  workdir, _ = single_run
  out = tmp_path / "field.fits"
  status, printed, err = run_cli(capsys, "--run", workdir, "--field", sdss_frames_dir / "001035-6-0017",
                                 "--max-objects", 60, "--out", out, "--figure", tmp_path / "f.png",
                                 "--regions", tmp_path / "f.reg")
  assert status == 0, err
  table = catalogue.read_catalogue(out)
  assert len(table) == 60 and "60 objects" in printed and table.meta["SEGMAP"] == "sep"
  with fits.open(tmp_path / "field_segmap.fits") as hdul:
    seg_map, header = hdul[0].data, hdul[0].header
  assert seg_map.shape == (1489, 2048) and header["CATALOG"] == "field.fits"
  x, y = np.asarray(table["x"]), np.asarray(table["y"])
  assert seg_map[np.floor(y + 0.5).astype(int), np.floor(x + 0.5).astype(int)].tolist() == list(table["id"])
  ra, dec = WCS(header).pixel_to_world_values(x, y)
  np.testing.assert_allclose(ra, table["ra"], rtol=0, atol=1e-9)
  np.testing.assert_allclose(dec, table["dec"], rtol=0, atol=1e-9)
  assert set(np.unique(seg_map)) <= set(range(61))
  assert (tmp_path / "f.png").stat().st_size > 10_000
  assert len((tmp_path / "f.reg").read_text().splitlines()) == 3 + 60
