"""Strict, safe reading of the study's .npy formats: every bad input refused by name."""

import pickle

import numpy as np
import pytest

from stargal_jax.data import formats
from stargal_jax.data.formats import DataFormatError


def _images(n, seed=0):
  return np.random.default_rng(seed).standard_normal((n,) + formats.IMAGE_SHAPE).astype(np.float32)


def _labelled(path, classes, seed=0, objID_dtype="<i8", class_dtype="<U6", z_dtype="<f8"):
  n = len(classes)
  dtype = np.dtype([("objID", objID_dtype), ("image", "<f4", formats.IMAGE_SHAPE),
                    ("class", class_dtype), ("z", z_dtype)])
  records = np.zeros(n, dtype)
  records["objID"] = np.arange(n) + 1000
  records["image"] = _images(n, seed)
  records["class"] = classes
  records["z"] = np.linspace(0.0, 0.3, n)
  np.save(path, records, allow_pickle=False)
  return records


def test_labelled_round_trip_with_provenance(tmp_path):
  path = tmp_path / "a.npy"
  images = _images(3)
  formats.write_labelled(path, [7, 8, 9], images, ["STAR", "GALAXY", "QSO"], [0.0, 0.1, 1.5])
  got = formats.load_file(path, "labelled")
  np.testing.assert_array_equal(got.images, images)
  np.testing.assert_array_equal(got.labels, [0, 1, 2])
  np.testing.assert_array_equal(got.objID, [7, 8, 9])
  np.testing.assert_allclose(got.z, [0.0, 0.1, 1.5], rtol=1e-7)
  np.testing.assert_array_equal(got.record, [0, 1, 2])
  assert got.path == path and got.n_records == 3 and got.images.dtype == np.float32
  np.testing.assert_array_equal(formats.is_galaxy(got.labels), [False, True, False])


def test_labelled_accepts_bytes_classes_and_other_int_float_types(tmp_path):
  path = tmp_path / "b.npy"
  records = _labelled(path, [b"GALAXY", b"STAR"], objID_dtype=">u8", class_dtype="S6", z_dtype="<f4")
  got = formats.load_file(path, "labelled")
  np.testing.assert_array_equal(got.labels, [1, 0])
  np.testing.assert_array_equal(got.objID, records["objID"].astype(np.int64))
  np.testing.assert_array_equal(got.images, records["image"])


def test_big_endian_images_are_read_as_native_float32(tmp_path):
  path = tmp_path / "be.npy"
  records = np.zeros(2, [("image", ">f4", formats.IMAGE_SHAPE)])
  records["image"] = _images(2)
  np.save(path, records, allow_pickle=False)
  got = formats.load_file(path, "unlabelled")
  assert got.images.dtype == np.dtype("=f4")
  np.testing.assert_array_equal(got.images, _images(2))


def test_unlabelled_multi_record_and_0d_scalar(tmp_path):
  formats.write_unlabelled(tmp_path / "many.npy", _images(4))
  got = formats.load_file(tmp_path / "many.npy", "unlabelled")
  np.testing.assert_array_equal(got.images, _images(4))
  np.testing.assert_array_equal(got.labels, [-1] * 4)
  np.testing.assert_array_equal(got.objID, [-1] * 4)
  scalar = np.zeros((), formats.UNLABELLED_DTYPE)
  scalar["image"] = _images(1)[0]
  np.save(tmp_path / "scalar.npy", scalar, allow_pickle=False)
  got = formats.load_file(tmp_path / "scalar.npy", "unlabelled")
  assert got.images.shape == (1,) + formats.IMAGE_SHAPE
  np.testing.assert_array_equal(got.images[0], _images(1)[0])


def _refused(path, kind, *words):
  with pytest.raises(DataFormatError) as info:
    formats.load_file(path, kind)
  message = str(info.value)
  assert str(path) in message
  for word in words:
    assert word in message, message
  return message


def test_truncated_file_refused(tmp_path):
  path = tmp_path / "t.npy"
  formats.write_unlabelled(path, _images(2))
  data = path.read_bytes()
  path.write_bytes(data[:-100])
  _refused(path, "unlabelled", "truncated")
  path.write_bytes(data[:60])  # inside the header
  _refused(path, "unlabelled", "not a valid .npy")


def test_garbage_and_pickle_files_refused(tmp_path):
  garbage = tmp_path / "g.npy"
  garbage.write_bytes(b"this is not a numpy file at all" * 10)
  _refused(garbage, "unlabelled", "not a valid .npy")
  pickled = tmp_path / "p.npy"
  pickled.write_bytes(pickle.dumps({"image": _images(1)}))
  _refused(pickled, "unlabelled", "not a valid .npy")


def test_object_dtype_refused_without_unpickling(tmp_path):
  path = tmp_path / "o.npy"
  # A hostile file written by hand, as numpy writes object arrays: a header declaring an object field, then a
  # pickle payload. Reading must refuse it from the header alone.
  dtype = np.dtype([("objID", "<i8"), ("image", "O"), ("class", "<U6"), ("z", "<f8")])
  with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (1,)})
    pickle.dump([(1, _images(1)[0], "STAR", 0.1)], f)
  _refused(path, "labelled", "Python objects")


@pytest.mark.parametrize("drop,add,word", [("z", None, "missing ['z']"), (None, "extra", "extra ['extra']")])
def test_missing_or_extra_field_refused(tmp_path, drop, add, word):
  fields = [("objID", "<i8"), ("image", "<f4", formats.IMAGE_SHAPE), ("class", "<U6"), ("z", "<f8")]
  fields = [f for f in fields if f[0] != drop] + ([(add, "<f4")] if add else [])
  path = tmp_path / "f.npy"
  np.save(path, np.zeros(2, fields), allow_pickle=False)
  _refused(path, "labelled", word)


def test_labelled_file_read_as_unlabelled_is_refused(tmp_path):
  path = tmp_path / "l.npy"
  _labelled(path, ["STAR"])
  _refused(path, "unlabelled", "extra")


def test_plain_array_refused(tmp_path):
  path = tmp_path / "plain.npy"
  np.save(path, _images(2), allow_pickle=False)
  _refused(path, "unlabelled", "structured array")


def test_wrong_image_shape_and_dtype_refused(tmp_path):
  path = tmp_path / "s.npy"
  np.save(path, np.zeros(1, [("image", "<f4", (5, 32, 32))]), allow_pickle=False)
  _refused(path, "unlabelled", "shape (5, 32, 32)")
  np.save(path, np.zeros(1, [("image", "<f8", formats.IMAGE_SHAPE)]), allow_pickle=False)
  _refused(path, "unlabelled", "float64", "float32")
  np.save(path, np.zeros((2, 2), formats.UNLABELLED_DTYPE), allow_pickle=False)
  _refused(path, "unlabelled", "1-D")


def test_wrong_scalar_field_dtype_refused(tmp_path):
  path = tmp_path / "c.npy"
  _labelled(path, ["STAR"], z_dtype="<i4")
  _refused(path, "labelled", "'z'", "float")


def test_unknown_class_refused_naming_the_record(tmp_path):
  path = tmp_path / "u.npy"
  _labelled(path, ["STAR", "GALAXY", "STR", "STAR"])
  _refused(path, "labelled", "record 2", "'STR'")


@pytest.mark.parametrize("policy", ["zero", "drop", "raise"])
def test_nonfinite_policies_counted(tmp_path, policy):
  images = _images(5)
  images[1, 0, :3, 0] = np.nan
  images[3, 4, 10, 10] = np.inf
  images[3, 2, 0, :] = -np.inf
  path = tmp_path / "n.npy"
  formats.write_unlabelled(path, images)
  bad_pixels = ~np.isfinite(images)
  bad_objects = bad_pixels.reshape(5, -1).any(axis=1)
  if policy == "raise":
    with pytest.raises(DataFormatError, match=r"record 1: 3 non-finite"):
      formats.load_file(path, "unlabelled", policy)
    return
  got = formats.load_file(path, "unlabelled", policy)
  assert got.nonfinite_objects == bad_objects.sum() == 2
  assert got.nonfinite_pixels == bad_pixels.sum() == 3 + 1 + 64
  assert np.isfinite(got.images).all()
  if policy == "zero":
    np.testing.assert_array_equal(got.images, np.where(bad_pixels, 0.0, images))
    np.testing.assert_array_equal(got.record, np.arange(5))
  else:
    np.testing.assert_array_equal(got.images, images[~bad_objects])
    np.testing.assert_array_equal(got.record, np.flatnonzero(~bad_objects))


def test_summarize_counts_and_skip_mode(tmp_path):
  _labelled(tmp_path / "a.npy", ["STAR", "GALAXY", "GALAXY"], seed=1)
  _labelled(tmp_path / "b.npy", ["QSO", "GALAXY"], seed=2)
  _labelled(tmp_path / "c.npy", ["STAR", "ALIEN"], seed=3)
  (tmp_path / "d.npy").write_bytes(b"junk")
  files = formats.resolve_paths(tmp_path)
  with pytest.raises(DataFormatError, match="ALIEN"):
    formats.summarize(files, "labelled")
  summary = formats.summarize(files, "labelled", skip_bad_files=True)
  assert summary["n_files"] == 4 and summary["n_files_read"] == 2 and summary["n_bad_files"] == 2
  assert summary["n_objects"] == 5 and summary["classes"] == {"STAR": 1, "GALAXY": 3, "QSO": 1}
  assert [b["path"] for b in summary["bad_files"]] == [str(tmp_path / "c.npy"), str(tmp_path / "d.npy")]
  assert "record 1" in summary["bad_files"][0]["reason"] and "not a valid .npy" in summary["bad_files"][1]["reason"]


def test_resolve_paths_dir_glob_list_and_nothing(tmp_path):
  for name in ["b.npy", "a.npy", "c.txt"]:
    (tmp_path / name).write_bytes(b"")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "d.npy").write_bytes(b"")
  expected = [tmp_path / "a.npy", tmp_path / "b.npy"]
  assert formats.resolve_paths(tmp_path) == expected
  assert formats.resolve_paths(str(tmp_path / "*.npy")) == expected
  assert formats.resolve_paths([tmp_path / "b.npy", str(tmp_path / "a.np?"), tmp_path / "b.npy"]) == expected
  with pytest.raises(FileNotFoundError, match="no .npy files match"):
    formats.resolve_paths(str(tmp_path / "*.fits"))


def test_unknown_kind_and_policy_list_valid_names(tmp_path):
  with pytest.raises(ValueError, match=r"\['labelled', 'unlabelled'\]"):
    formats.read_header(tmp_path / "x.npy", "labeled")
  with pytest.raises(ValueError, match=r"\['drop', 'raise', 'zero'\]"):
    formats.load_file(tmp_path / "x.npy", "labelled", "ignore")
