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
  records["objID"] = np.arange(n) + 1000 * (seed + 1)  # unique across files written with different seeds
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


# --- Input edge cases (issue 14): each refused or counted by name. ---


def _empty_file(path, dtype=formats.UNLABELLED_DTYPE):
  np.save(path, np.zeros(0, dtype), allow_pickle=False)


@pytest.mark.parametrize("kind,dtype", [("unlabelled", formats.UNLABELLED_DTYPE), ("labelled", formats.LABELLED_DTYPE)])
def test_zero_record_file_is_a_bad_file_refused_by_name(tmp_path, kind, dtype):
  path = tmp_path / "empty.npy"
  _empty_file(path, dtype)
  _refused(path, kind, "0 records")
  with pytest.raises(DataFormatError, match=r"empty.npy: .*0 records"):
    formats.summarize([path], kind)


def test_summarize_skips_and_counts_a_zero_record_file(tmp_path):
  formats.write_unlabelled(tmp_path / "a.npy", _images(2))
  _empty_file(tmp_path / "b.npy")
  summary = formats.summarize(formats.resolve_paths(tmp_path), "unlabelled", skip_bad_files=True)
  assert (summary["n_files"], summary["n_files_read"], summary["n_objects"]) == (2, 1, 2)
  assert [b["path"] for b in summary["bad_files"]] == [str(tmp_path / "b.npy")]
  assert "0 records" in summary["bad_files"][0]["reason"]


def _header_only_file(path, n_records, dtype=formats.UNLABELLED_DTYPE, sparse=True):
  """A valid header declaring `n_records`; the data region is a hole (sparse: no disk used, reads as zeros)."""
  with open(path, "wb") as f:
    np.lib.format.write_array_header_2_0(
        f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n_records,)})
    if sparse:
      f.truncate(f.tell() + n_records * dtype.itemsize)


def test_header_over_the_record_limit_is_refused_before_reading(tmp_path, monkeypatch):
  path = tmp_path / "huge.npy"
  n = 200_000  # 16.4 GB of data on a sparse file whose size matches its header exactly
  _header_only_file(path, n)
  assert path.stat().st_size > 16e9 and path.stat().st_blocks * 512 < 1e6

  def no_reads(*args, **kwargs):
    raise AssertionError("data read although the header is over the limit")

  monkeypatch.setattr(np, "empty", no_reads)  # nothing may be allocated for the records
  message = _refused(path, "unlabelled", f"{n} records", "limit of 100000", "max_records_per_file")
  assert "\n" not in message
  with pytest.raises(DataFormatError, match="limit of 100000"):
    formats.summarize([path], "unlabelled")
  assert formats.MAX_RECORDS_PER_FILE == 100_000


def test_record_limit_is_configurable(tmp_path):
  path = tmp_path / "three.npy"
  formats.write_unlabelled(path, _images(3))
  assert len(formats.load_file(path, "unlabelled", max_records_per_file=3).images) == 3
  with pytest.raises(DataFormatError, match="3 records, over the limit of 2"):
    formats.load_file(path, "unlabelled", max_records_per_file=2)
  with pytest.raises(ValueError, match="max_records_per_file"):
    formats.load_file(path, "unlabelled", max_records_per_file=0)


@pytest.mark.parametrize("shape", [(10 ** 20,), (-3,)])
def test_absurd_header_record_counts_refused_by_name(tmp_path, shape):
  path = tmp_path / "absurd.npy"
  with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(formats.UNLABELLED_DTYPE), "fortran_order": False,
            "shape": shape})
    f.write(b"\0" * 1000)
  _refused(path, "unlabelled")


def test_uint64_objid_beyond_int64_refused_and_int64_max_kept_exactly(tmp_path):
  path = tmp_path / "ids.npy"
  records = _labelled(path, ["STAR", "GALAXY", "QSO"], objID_dtype="<u8")
  records["objID"] = [5, 2 ** 63 - 1, 2 ** 63 + 7]
  np.save(path, records, allow_pickle=False)
  _refused(path, "labelled", "record 2", str(2 ** 63 + 7), "int64")
  records["objID"][2] = 6
  np.save(path, records, allow_pickle=False)
  got = formats.load_file(path, "labelled")
  assert got.objID.dtype == np.int64 and got.objID.tolist() == [5, 2 ** 63 - 1, 6]


def test_duplicate_objid_within_a_file_refused(tmp_path):
  path = tmp_path / "dup.npy"
  formats.write_labelled(path, [11, 12, 11], _images(3), ["STAR", "GALAXY", "STAR"], [0, 0, 0])
  with pytest.raises(DataFormatError, match=r"dup.npy, record 2: objID 11 already in .*dup.npy, record 0"):
    formats.summarize([path], "labelled")
  with pytest.raises(DataFormatError, match="objID 11"):
    formats.load_file(path, "labelled")


def test_duplicate_objid_across_files_refused_naming_both_files_or_kept_once(tmp_path):
  formats.write_labelled(tmp_path / "a.npy", [1, 2, 3], _images(3, 1), ["STAR", "GALAXY", "QSO"], [0, 0, 0])
  formats.write_labelled(tmp_path / "b.npy", [4, 2, 5, 3], _images(4, 2), ["STAR"] * 4, [0] * 4)
  files = formats.resolve_paths(tmp_path)
  with pytest.raises(DataFormatError) as info:
    formats.summarize(files, "labelled")
  message = str(info.value)
  assert f"{tmp_path / 'b.npy'}, record 1: objID 2 already in {tmp_path / 'a.npy'}, record 1" in message
  assert "duplicates='keep_first'" in message
  with pytest.raises(DataFormatError, match="objID 2"):  # not a bad file: which copy is right is unknown
    formats.summarize(files, "labelled", skip_bad_files=True)
  kept = formats.summarize(files, "labelled", duplicates="keep_first")
  assert kept["n_records"] == 7 and kept["n_objects"] == 5
  assert kept["duplicates"] == {"policy": "keep_first", "objects_dropped": 2}
  assert kept["classes"] == {"STAR": 3, "GALAXY": 1, "QSO": 1}
  with pytest.raises(ValueError, match="raise, keep_first"):
    formats.summarize(files, "labelled", duplicates="ignore")


@pytest.mark.parametrize("policy", ["zero", "drop", "raise"])
def test_physically_impossible_pixels_follow_nan_policy_and_are_counted_apart(tmp_path, policy):
  lo, hi = formats.PIXEL_BOUNDS
  assert (lo, hi) == (-1e3, 1e6)
  images = _images(6)
  images[1, 2, 3, 4] = 1e30
  images[1, 0, 0, 0:2] = -1e30
  images[2, 4, 5, 5] = np.nextafter(np.float32(hi), np.float32(np.inf))  # just beyond the bound
  images[3, 1, 1, 1] = hi  # on the bound: allowed
  images[3, 1, 1, 2] = lo
  images[4, 0, 0, 0] = np.nan  # non-finite, counted apart
  images[4, 0, 0, 1] = np.inf
  path = tmp_path / "px.npy"
  formats.write_unlabelled(path, images)
  beyond = np.isfinite(images) & ((images < lo) | (images > hi))
  nonfinite = ~np.isfinite(images)
  assert beyond.sum() == 4 and nonfinite.sum() == 2
  if policy == "raise":
    with pytest.raises(DataFormatError, match=r"px.npy, record 1: 3 pixels outside \[-1000, 1e\+06\]"):
      formats.load_file(path, "unlabelled", policy)
    return
  got = formats.load_file(path, "unlabelled", policy)
  assert (got.nonfinite_objects, got.nonfinite_pixels) == (1, 2)
  assert (got.out_of_bounds_objects, got.out_of_bounds_pixels) == (2, 4)
  if policy == "zero":
    np.testing.assert_array_equal(got.images, np.where(beyond | nonfinite, 0.0, images))
  else:
    keep = [0, 3, 5]
    np.testing.assert_array_equal(got.images, images[keep])
    np.testing.assert_array_equal(got.record, keep)
  summary = formats.summarize([path], "unlabelled", policy)
  assert summary["nonfinite"]["objects"] == 1 and summary["nonfinite"]["pixels"] == 2
  action = {"zero": "out-of-bounds pixels set to 0", "drop": "objects dropped"}[policy]
  assert summary["out_of_bounds"] == {"bounds": [lo, hi], "policy": policy, "objects": 2, "pixels": 4,
                                      "action": action}
  narrow = formats.load_file(path, "unlabelled", policy, pixel_bounds=(-1e31, 1e31))
  assert narrow.out_of_bounds_pixels == 0


def test_large_files_are_read_in_chunks_with_the_same_result(tmp_path, monkeypatch):
  images = _images(7, 3)
  images[5, 1, 2, 3] = np.nan
  path = tmp_path / "big.npy"
  formats.write_labelled(path, np.arange(7) + 40, images, ["STAR", "GALAXY"] * 3 + ["QSO"], np.arange(7) / 10)
  whole = formats.load_file(path, "labelled", "drop")
  monkeypatch.setattr(formats, "CHUNK_RECORDS", 3)
  chunks = list(formats.iter_file_chunks(formats.read_header(path, "labelled"), "labelled", "drop"))
  assert [c.n_records for c in chunks] == [3, 3, 1]
  for name in ("images", "labels", "objID", "z", "record"):
    np.testing.assert_array_equal(np.concatenate([getattr(c, name) for c in chunks]), getattr(whole, name))
  assert formats.load_file(path, "labelled", "drop").images.tobytes() == whole.images.tobytes()


def test_fortran_order_header_reads_the_same_records(tmp_path):
  records = np.zeros(3, formats.LABELLED_DTYPE)
  records["objID"], records["image"], records["class"], records["z"] = [4, 5, 6], _images(3, 4), "GALAXY", 0.2
  path = tmp_path / "fortran.npy"
  with open(path, "wb") as f:  # as a Fortran-order writer would: a 1-D array has the same bytes either way
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(records.dtype), "fortran_order": True, "shape": (3,)})
    f.write(records.tobytes())
  got = formats.load_file(path, "labelled")
  np.testing.assert_array_equal(got.images, records["image"])
  np.testing.assert_array_equal(got.objID, [4, 5, 6])
  assert np.load(path, allow_pickle=False)["objID"].tolist() == [4, 5, 6]  # numpy agrees
