"""config.data -> stores, normaliser, truth; batches as a pure function of the step."""

import dataclasses

import ml_collections
import numpy as np
import pytest

from stargal_jax import inputs as inputs_lib
from stargal_jax.data import formats
from stargal_jax.simulate import SimParams


def test_batch_schedule_is_a_pure_function_of_the_step():
  fetch = lambda idx: idx.copy()
  a = inputs_lib.batch_schedule(50, 8, seed=3, fetch=fetch)
  b = inputs_lib.batch_schedule(50, 8, seed=3, fetch=fetch)
  steps = [9, 0, 7, 6, 12, 1]
  for s in steps:  # Any order of access (as after a resume) gives the same batch.
    np.testing.assert_array_equal(a(s)["x"], b(s)["x"])
  epoch0 = np.concatenate([a(s)["x"] for s in range(6)])  # 50 // 8 = 6 steps per epoch.
  assert len(np.unique(epoch0)) == 48 and epoch0.max() < 50
  assert not np.array_equal(a(0)["x"], a(6)["x"])  # A new permutation each epoch.
  with pytest.raises(ValueError, match="larger than the training set"):
    inputs_lib.batch_schedule(5, 8, 0, fetch)


def _write_study_files(root, rng):
  (root / "lab").mkdir()
  (root / "unl").mkdir()
  images = rng.normal(0, 0.05, size=(12, 5, 64, 64)).astype(np.float32)
  images[:, :, 30:34, 30:34] += 5.0
  classes = np.array(["STAR", "GALAXY", "QSO"] * 4)
  formats.write_labelled(root / "lab" / "a.npy", np.arange(100, 107), images[:7], classes[:7], np.zeros(7))
  formats.write_labelled(root / "lab" / "b.npy", np.arange(107, 112), images[7:], classes[7:], np.zeros(5))
  for i in range(10):
    formats.write_unlabelled(root / "unl" / f"u{i}.npy", images[i:i + 1])
  return images


def test_load_inputs_from_user_paths(tmp_path):
  images = _write_study_files(tmp_path, np.random.default_rng(0))
  data = ml_collections.ConfigDict(dict(
      labelled=str(tmp_path / "lab"), unlabelled=str(tmp_path / "unl" / "*.npy"), cache_dir=str(tmp_path / "c"),
      nan_policy="zero", skip_bad_files=False, normalization="zscore", normalizer_sample=10))
  inputs = inputs_lib.load_inputs(data)
  assert len(inputs.labelled) == 12 and len(inputs.unlabelled) == 10 and inputs.truth is None
  np.testing.assert_array_equal(inputs.labelled.index["objID"], np.arange(100, 112))
  np.testing.assert_array_equal(inputs.labelled.index["label"], [0, 1, 2] * 4)
  x = inputs_lib.model_images(inputs.labelled, inputs.normalizer)(np.array([0, 3]))
  assert x.shape == (2, 64, 64, 5) and x.dtype == np.float32
  # NHWC of the normalised image: band 2 of object 3 at pixel (row 31, col 32).
  from stargal_jax.data import normalize
  expected = normalize.normalize(inputs.normalizer, images[3:4])[0, 2, 31, 32]
  assert x[1, 31, 32, 2] == pytest.approx(expected, rel=1e-6)


def test_load_inputs_needs_both_sets(tmp_path):
  data = ml_collections.ConfigDict(dict(labelled=str(tmp_path), unlabelled="", cache_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="both"):
    inputs_lib.load_inputs(data)


def test_simulator_truth_is_aligned_with_the_store(tmp_path):
  data = ml_collections.ConfigDict(dict(
      labelled="", unlabelled="", cache_dir=str(tmp_path), nan_policy="zero", skip_bad_files=False,
      normalization="asinh", normalizer_sample=20, default_n_labelled=40, default_n_unlabelled=20,
      default_seed=5, workers=1, sim_params=dataclasses.asdict(SimParams())))
  inputs = inputs_lib.load_inputs(data)
  truth = inputs.truth
  np.testing.assert_array_equal(truth["objID"], inputs.labelled.index["objID"])
  np.testing.assert_array_equal(truth["label"], inputs.labelled.index["label"])
  # Each neighbour row points at the object whose mask carries its label.
  for row, value in zip(truth["nb_object"], truth["nb_label"]):
    assert truth["n_neighbours"][row] >= 1
    assert value >= 2


def test_sim_params_in_the_config_select_a_shifted_simulation(tmp_path):
  from configs import common
  data = common.data_config()
  data.cache_dir = str(tmp_path)
  data.default_n_labelled, data.default_n_unlabelled, data.normalizer_sample, data.workers = 4, 3, 3, 1
  data.sim_params.seeing_r_median_arcsec = 1.9
  inputs = inputs_lib.load_inputs(data)
  assert "-p" in inputs.source  # its own cached set, not the default one
  manifest = next((tmp_path / "sim").glob("*-p*/manifest.json")).read_text()
  assert '"seeing_r_median_arcsec": 1.9' in manifest


def _data_config(tmp_path, **overrides):
  values = dict(labelled=str(tmp_path / "lab"), unlabelled=str(tmp_path / "unl" / "*.npy"),
                cache_dir=str(tmp_path / "c"), nan_policy="zero", skip_bad_files=False, normalization="zscore",
                normalizer_sample=10, duplicates="raise", max_records_per_file=100_000, pixel_bounds=(-1e3, 1e6))
  return ml_collections.ConfigDict({**values, **overrides})


def test_the_data_layer_policies_come_from_the_config(tmp_path):
  """config.data.duplicates / max_records_per_file / pixel_bounds reach the reader (configs/common.py sets them)."""
  from configs import common
  assert {"duplicates", "max_records_per_file", "pixel_bounds"} <= set(common.data_config())
  images = _write_study_files(tmp_path, np.random.default_rng(0))
  formats.write_labelled(tmp_path / "lab" / "c.npy", np.array([100]), images[:1], np.array(["STAR"]), np.zeros(1))
  with pytest.raises(formats.DuplicateObjIDError, match="100"):
    inputs_lib.load_inputs(_data_config(tmp_path))
  kept = inputs_lib.load_inputs(_data_config(tmp_path, duplicates="keep_first"))
  assert len(kept.labelled) == 12
  with pytest.raises(formats.DataFormatError, match="7 records"):
    inputs_lib.load_inputs(_data_config(tmp_path, duplicates="keep_first", max_records_per_file=6))
  bounded = inputs_lib.open_stores(_data_config(tmp_path, duplicates="keep_first", pixel_bounds=(-1e3, 4.0)))
  # Pixels above 4 nanomaggies (the raised 4x4 block of every band, in every image, + noise): counted by hand.
  by_hand = int(np.sum(images[:10] > 4.0))
  assert bounded.unlabelled.summary["out_of_bounds"]["pixels"] == by_hand > 0
  assert kept.unlabelled.summary["out_of_bounds"]["pixels"] == 0


def test_open_stores_identity_is_the_stores_fingerprints(tmp_path):
  _write_study_files(tmp_path, np.random.default_rng(0))
  opened = inputs_lib.open_stores(_data_config(tmp_path))
  assert opened.identity == {
      "labelled": {"store": opened.labelled.summary["fingerprint"], "files": 2, "objects": 12},
      "unlabelled": {"store": opened.unlabelled.summary["fingerprint"], "files": 10, "objects": 10}}


def test_a_batch_names_its_suspect_rows_by_file_and_record(tmp_path):
  """`describe(step)` of a schedule over a store names the step's batch rows, the largest |pixel| first: checked
  against the batch drawn by hand from the documented permutation."""
  images = _write_study_files(tmp_path, np.random.default_rng(0))
  inputs = inputs_lib.load_inputs(_data_config(tmp_path))
  schedule = inputs_lib.batch_schedule(len(inputs.unlabelled), 4, 7, inputs_lib.model_images(inputs.unlabelled,
                                                                                             inputs.normalizer))
  step = 3  # epoch 1 (2 steps per epoch), position 1
  by_hand = np.sort(np.random.default_rng([7, 1]).permutation(10)[4:8])
  np.testing.assert_array_equal(schedule.indices(step), by_hand)
  worst = by_hand[np.argmax(np.abs(images[by_hand]).reshape(4, -1).max(axis=1))]
  text = schedule.describe(step)
  first = text.split(";")[0]
  assert f"u{worst}.npy, record 0" in first and len(text.split(";")) == 4
  assert inputs_lib.batch_schedule(10, 4, 7, lambda idx: idx).describe(step) is None


def test_dihedral_is_the_eight_symmetries_of_the_square():
  rng = np.random.default_rng(1)
  image = rng.normal(size=(1, 6, 6, 2))
  out = inputs_lib.dihedral(np.repeat(image, 8, axis=0), np.arange(8))
  # Direct: explicit index maps of the square's symmetries on an (H, W) grid.
  i, j = np.indices((6, 6))
  n = 5
  maps = [(i, j), (j, n - i), (n - i, n - j), (n - j, i)]  # 0, 1, 2, 3 quarter turns (np.rot90's direction)
  for t in range(8):
    rows, cols = maps[t % 4]
    expected = image[0][rows, cols]
    if t >= 4:
      expected = expected[:, ::-1]
    np.testing.assert_array_equal(out[t], expected)
  assert len({out[t].tobytes() for t in range(8)}) == 8  # an asymmetric image: eight distinct images


def test_batch_schedule_augmentation_is_pure_and_varies():
  images = np.random.default_rng(2).normal(size=(40, 4, 4, 1)).astype(np.float32)
  fetch = lambda idx: images[idx]
  a = inputs_lib.batch_schedule(40, 8, seed=3, fetch=fetch, augment="dihedral")
  b = inputs_lib.batch_schedule(40, 8, seed=3, fetch=fetch, augment="dihedral")
  plain = inputs_lib.batch_schedule(40, 8, seed=3, fetch=fetch)
  for step in (3, 0, 11):
    np.testing.assert_array_equal(a(step)["x"], b(step)["x"])
  assert not np.array_equal(a(0)["x"], plain(0)["x"])
  # every augmented image is a symmetry of its plain twin
  for got, raw in zip(a(0)["x"], plain(0)["x"]):
    assert any(np.array_equal(got, inputs_lib.dihedral(raw[None], np.array([t]))[0]) for t in range(8))
  with pytest.raises(ValueError, match="dihedral"):
    inputs_lib.batch_schedule(40, 8, 0, fetch, augment="rotate")


def test_training_images_join_stores_without_labels(tmp_path):
  images = _write_study_files(tmp_path, np.random.default_rng(3))
  data = ml_collections.ConfigDict(dict(
      labelled=str(tmp_path / "lab"), unlabelled=str(tmp_path / "unl"), cache_dir=str(tmp_path / "c"),
      nan_policy="zero", skip_bad_files=False, normalization="zscore", normalizer_sample=30,
      train_on_labelled_images=True))
  inputs = inputs_lib.load_inputs(data)
  assert len(inputs.unlabelled) == 22 and len(inputs.labelled) == 12
  assert np.all(inputs.unlabelled.index["label"] == -1)
  both = np.concatenate([images[:10], images])  # unlabelled u0..u9, then the labelled set in store order
  pick = np.array([21, 0, 10, 9, 15])
  np.testing.assert_array_equal(inputs.unlabelled.read(pick), both[pick])
  # A subset (what the segmentation fits on) is a view in the order given, across the parts.
  rows = np.array([3, 12, 13, 4, 21])
  view = inputs.unlabelled.subset(rows)
  assert len(view) == 5 and np.all(view.index["label"] == -1)
  np.testing.assert_array_equal(view.read(np.arange(5)), both[rows])
  np.testing.assert_array_equal(view.subset([4, 0]).read([0, 1]), both[[21, 3]])


def test_training_images_name_suspect_rows_across_parts(tmp_path):
  """A batch over the joined stores names its worst rows by their own part's file, as Store.suspect_rows does:
  the largest |pixel| of the batch found by hand over both parts."""
  images = _write_study_files(tmp_path, np.random.default_rng(4))
  inputs = inputs_lib.load_inputs(_data_config(tmp_path, train_on_labelled_images=True))
  pick = np.array([2, 11, 15, 20])
  both = np.concatenate([images[:10], images])  # unlabelled u0..u9, then the labelled set in store order
  rows = inputs.unlabelled.suspect_rows(pick, top=2)
  by_hand = np.sort(np.abs(both[pick]).reshape(len(pick), -1).max(axis=1))[::-1][:2]
  np.testing.assert_allclose([r["max_abs_pixel"] for r in rows], by_hand, rtol=1e-6)
  schedule = inputs_lib.batch_schedule(len(inputs.unlabelled), 4, 7,
                                       inputs_lib.model_images(inputs.unlabelled, inputs.normalizer))
  assert len(schedule.describe(0).split(";")) == 4
