"""The packed store: exact round trip, provenance, reuse and re-pack, atomicity, batches, subsets."""

import json
import os
import shutil
import threading

import numpy as np
import pytest

from stargal_jax.data import formats, store
from stargal_jax.data.formats import DataFormatError


def _images(n, seed):
  return np.random.default_rng(seed).standard_normal((n,) + formats.IMAGE_SHAPE).astype(np.float32)


@pytest.fixture
def labelled_dir(tmp_path):
  """Three labelled files of 3, 1 and 2 records, written out of name order."""
  directory = tmp_path / "labelled"
  directory.mkdir()
  specs = {"c.npy": ["GALAXY", "STAR"], "a.npy": ["STAR", "GALAXY", "QSO"], "b.npy": ["GALAXY"]}
  originals = {}
  for seed, (name, classes) in enumerate(specs.items()):
    n = len(classes)
    images, objID = _images(n, seed), 100 * seed + np.arange(n)
    formats.write_labelled(directory / name, objID, images, classes, 0.1 * seed + np.zeros(n))
    originals[name] = (images, objID, classes)
  return directory, originals


def test_round_trip_exact_with_provenance(labelled_dir, tmp_path):
  directory, originals = labelled_dir
  packed = store.pack_store(directory, "labelled", tmp_path / "cache")
  names = sorted(originals)
  assert packed.files == tuple(str(directory / n) for n in names)
  np.testing.assert_array_equal(packed.images, np.concatenate([originals[n][0] for n in names]))
  np.testing.assert_array_equal(packed.index["objID"], np.concatenate([originals[n][1] for n in names]))
  classes = sum((originals[n][2] for n in names), [])
  np.testing.assert_array_equal(packed.labels, [formats.CLASS_CODES[c] for c in classes])
  np.testing.assert_array_equal(packed.index["file"], [0, 0, 0, 1, 2, 2])
  np.testing.assert_array_equal(packed.index["record"], [0, 1, 2, 0, 0, 1])
  np.testing.assert_allclose(packed.index["z"], [0.1] * 3 + [0.2] + [0.0] * 2, rtol=1e-6)
  assert len(packed) == 6 and packed.summary["classes"] == {"STAR": 2, "GALAXY": 3, "QSO": 1}
  with pytest.raises(ValueError):
    packed.images[0, 0, 0, 0] = 1.0  # read-only
  # Everything on disk loads without pickle and agrees.
  assert np.load(packed.root / "images.npy", allow_pickle=False).shape == (6, 5, 64, 64)
  assert json.loads((packed.root / "summary.json").read_text())["fingerprint"] == packed.root.name


def test_reused_while_unchanged_and_repacked_when_a_file_changes(labelled_dir, tmp_path):
  directory, originals = labelled_dir
  cache = tmp_path / "cache"
  first = store.open_dataset(str(directory / "*.npy"), "labelled", cache)
  stamp = os.stat(first.root / "images.npy").st_mtime_ns
  again = store.open_dataset([directory / "b.npy", directory / "a.npy", directory / "c.npy"], "labelled", cache)
  assert again.root == first.root and os.stat(again.root / "images.npy").st_mtime_ns == stamp
  new_images = _images(1, 99)
  formats.write_labelled(directory / "b.npy", [5], new_images, ["STAR"], [0.0])
  changed = store.open_dataset(directory, "labelled", cache)
  assert changed.root != first.root
  np.testing.assert_array_equal(changed.images[3], new_images[0])
  assert changed.labels[3] == formats.CLASS_CODES["STAR"]
  other_policy = store.open_dataset(directory, "labelled", cache, nan_policy="drop")
  assert other_policy.root not in (first.root, changed.root)
  assert sorted(p.name for p in (cache / "stores").iterdir()) == sorted(
      {first.root.name, changed.root.name, other_policy.root.name})


def test_failed_pack_leaves_nothing_behind(labelled_dir, tmp_path):
  directory, _ = labelled_dir
  formats.write_labelled(directory / "bb.npy", [1, 2], _images(2, 5), ["STAR", "PLANET"], [0, 0])
  cache = tmp_path / "cache"
  with pytest.raises(DataFormatError, match=r"bb.npy, record 1: unknown class 'PLANET'"):
    store.pack_store(directory, "labelled", cache)
  assert list((cache / "stores").iterdir()) == []


def test_skip_bad_files_lists_them_and_packs_the_rest(labelled_dir, tmp_path):
  directory, originals = labelled_dir
  (directory / "0_garbage.npy").write_bytes(b"\x93NUMPY broken")
  formats.write_labelled(directory / "bb.npy", [1], _images(1, 5), ["PLANET"], [0])
  packed = store.pack_store(directory, "labelled", tmp_path / "cache", skip_bad_files=True)
  bad = packed.summary["bad_files"]
  assert [b["path"] for b in bad] == [str(directory / "0_garbage.npy"), str(directory / "bb.npy")]
  assert "PLANET" in bad[1]["reason"] and packed.summary["n_bad_files"] == 2
  assert len(packed) == 6 and packed.summary["n_files"] == 5
  np.testing.assert_array_equal(packed.images[:3], originals["a.npy"][0])
  assert packed.files[packed.index["file"][3]].endswith("b.npy")


def test_drop_policy_shrinks_the_images_file(tmp_path):
  images = _images(4, 0)
  images[1, 2, 5, 5] = np.nan
  formats.write_unlabelled(tmp_path / "u0.npy", images)
  formats.write_unlabelled(tmp_path / "u1.npy", _images(2, 1))
  packed = store.pack_store(str(tmp_path / "u*.npy"), "unlabelled", tmp_path / "cache", nan_policy="drop")
  expected = np.concatenate([images[[0, 2, 3]], _images(2, 1)])
  assert len(packed) == 5 and packed.summary["nonfinite"] == {
      "policy": "drop", "objects": 1, "pixels": 1, "action": "objects dropped"}
  reloaded = np.load(packed.root / "images.npy", allow_pickle=False)  # header rewritten, file truncated
  np.testing.assert_array_equal(reloaded, expected)
  np.testing.assert_array_equal(packed.index["record"], [0, 2, 3, 0, 1])
  np.testing.assert_array_equal(packed.index["objID"], [-1] * 5)
  zeroed = store.pack_store(str(tmp_path / "u*.npy"), "unlabelled", tmp_path / "cache")
  assert len(zeroed) == 6 and zeroed.images[1, 2, 5, 5] == 0.0 and zeroed.summary["nonfinite"]["pixels"] == 1


@pytest.fixture
def unlabelled_store(tmp_path):
  for i in range(5):
    formats.write_unlabelled(tmp_path / f"u{i}.npy", _images(1 + i % 3, i))
  return store.pack_store(tmp_path, "unlabelled", tmp_path / "cache")


def test_read_returns_requested_order(unlabelled_store):
  packed = unlabelled_store
  indices = np.array([7, 0, 3, 3, -1, 2])
  np.testing.assert_array_equal(packed.read(indices), np.asarray(packed.images)[indices])
  with pytest.raises(IndexError):
    packed.read([len(packed)])


def test_batch_indices_deterministic_permutation(unlabelled_store):
  packed = unlabelled_store
  n = len(packed)
  assert n == 9
  batches = list(packed.batch_indices(4, seed=3, epoch=1, drop_remainder=False))
  assert [len(b) for b in batches] == [4, 4, 1]
  np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(n))
  np.testing.assert_array_equal(np.concatenate(batches), np.random.default_rng([3, 1]).permutation(n))
  same = list(packed.batch_indices(4, seed=3, epoch=1, drop_remainder=False))
  assert all(np.array_equal(a, b) for a, b in zip(batches, same))
  other = np.concatenate(list(packed.batch_indices(4, seed=3, epoch=2, drop_remainder=False)))
  assert not np.array_equal(other, np.concatenate(batches))
  assert [len(b) for b in packed.batch_indices(4, seed=3, epoch=1)] == [4, 4]


def test_subset_is_a_view_that_reads_its_own_objects(unlabelled_store):
  packed = unlabelled_store
  chosen = np.array([8, 1, 4])
  sub = packed.subset(chosen)
  assert len(sub) == 3 and sub.images is packed.images
  np.testing.assert_array_equal(sub.read([0, 1, 2]), packed.read(chosen))
  assert sub.index.tobytes() == packed.index[chosen].tobytes()  # bytes: z is NaN for unlabelled
  np.testing.assert_array_equal(sub.subset([2, 0]).read([0, 1]), packed.read([4, 8]))
  assert sorted(np.concatenate(list(sub.batch_indices(2, 0, 0, drop_remainder=False)))) == [0, 1, 2]


def test_leftover_partial_directory_of_a_killed_pack_is_not_reused(labelled_dir, tmp_path):
  directory, originals = labelled_dir
  cache = tmp_path / "cache"
  key = store.fingerprint(formats.resolve_paths(directory), "labelled", "zero", False)
  partial = cache / "stores" / f".partial-{key}-killed"
  partial.mkdir(parents=True)
  np.save(partial / "images.npy", np.zeros((1,) + formats.IMAGE_SHAPE, np.float32), allow_pickle=False)
  packed = store.pack_store(directory, "labelled", cache)
  assert packed.root.name == key
  np.testing.assert_array_equal(packed.images[:3], originals["a.npy"][0])


@pytest.mark.parametrize("read_ahead", [0, 2, 50])
def test_iter_batches_yields_the_batch_order_and_its_images(unlabelled_store, read_ahead):
  packed = unlabelled_store
  expected = list(packed.batch_indices(2, seed=1, epoch=4, drop_remainder=False))
  got = list(packed.iter_batches(2, seed=1, epoch=4, drop_remainder=False, read_ahead=read_ahead))
  assert len(got) == len(expected) == 5
  for (indices, images), want in zip(got, expected):
    np.testing.assert_array_equal(indices, want)
    np.testing.assert_array_equal(images, np.asarray(packed.images)[want])


# --- Input edge cases (issue 14): the packer agrees with summarize, and a refused pack leaves nothing. ---


def test_zero_record_file_refused_by_name_or_skipped_and_listed(labelled_dir, tmp_path):
  directory, originals = labelled_dir
  empty = directory / "bb.npy"
  np.save(empty, np.zeros(0, formats.LABELLED_DTYPE), allow_pickle=False)
  cache = tmp_path / "cache"
  with pytest.raises(DataFormatError, match=r"bb.npy: .*0 records"):
    store.pack_store(directory, "labelled", cache)
  assert list((cache / "stores").iterdir()) == []
  packed = store.pack_store(directory, "labelled", cache, skip_bad_files=True)
  assert len(packed) == 6 and [b["path"] for b in packed.summary["bad_files"]] == [str(empty)]
  assert packed.summary == {**formats.summarize(formats.resolve_paths(directory), "labelled", skip_bad_files=True),
                            **{k: packed.summary[k] for k in ("format_version", "image_shape", "pack_seconds",
                                                              "fingerprint")}}


def test_header_over_the_record_limit_refused_before_any_allocation(labelled_dir, tmp_path, monkeypatch):
  directory, _ = labelled_dir
  huge = directory / "huge.npy"
  n = 200_000  # a sparse 16.4 GB file whose size matches its header
  with open(huge, "wb") as f:
    np.lib.format.write_array_header_2_0(
        f, {"descr": np.lib.format.dtype_to_descr(formats.LABELLED_DTYPE), "fortran_order": False, "shape": (n,)})
    f.truncate(f.tell() + n * formats.LABELLED_DTYPE.itemsize)
  real_open_memmap = np.lib.format.open_memmap

  def bounded_open_memmap(path, mode="r", dtype=None, shape=None, **kwargs):
    assert shape is None or shape[0] <= 6, f"images file sized for {shape[0]} records"
    return real_open_memmap(path, mode=mode, dtype=dtype, shape=shape, **kwargs)

  monkeypatch.setattr(np.lib.format, "open_memmap", bounded_open_memmap)
  cache = tmp_path / "cache"
  with pytest.raises(DataFormatError, match=rf"huge.npy: .*{n} records, over the limit of 100000"):
    store.pack_store(directory, "labelled", cache)
  packed = store.pack_store(directory, "labelled", cache, skip_bad_files=True)
  assert len(packed) == 6 and packed.summary["bad_files"][0]["path"] == str(huge)
  assert packed.summary["max_records_per_file"] == formats.MAX_RECORDS_PER_FILE


def test_objid_beyond_int64_refused_by_the_packer(tmp_path):
  records = np.zeros(2, [("objID", "<u8"), ("image", "<f4", formats.IMAGE_SHAPE), ("class", "<U6"), ("z", "<f8")])
  records["objID"], records["class"] = [1, 2 ** 64 - 1], ["STAR", "GALAXY"]
  np.save(tmp_path / "ids.npy", records, allow_pickle=False)
  with pytest.raises(DataFormatError, match=rf"ids.npy, record 1: objID {2 ** 64 - 1} is outside int64"):
    store.pack_store(tmp_path, "labelled", tmp_path / "cache")


def test_duplicate_objids_across_files_refused_or_kept_once(labelled_dir, tmp_path):
  directory, originals = labelled_dir  # objIDs: a.npy 100-102, b.npy 200, c.npy 0-1
  formats.write_labelled(directory / "d.npy", [7, 101, 8], _images(3, 9), ["QSO", "STAR", "GALAXY"], [1, 1, 1])
  cache = tmp_path / "cache"
  with pytest.raises(DataFormatError, match=rf"d.npy, record 1: objID 101 already in {directory / 'a.npy'}, record 1"):
    store.pack_store(directory, "labelled", cache)
  assert list((cache / "stores").iterdir()) == []
  packed = store.pack_store(directory, "labelled", cache, duplicates="keep_first")
  assert len(packed) == 8 and packed.summary["duplicates"] == {"policy": "keep_first", "objects_dropped": 1}
  np.testing.assert_array_equal(packed.index["objID"], [100, 101, 102, 200, 0, 1, 7, 8])
  np.testing.assert_array_equal(packed.index["record"][-2:], [0, 2])
  np.testing.assert_array_equal(packed.images[-2:], _images(3, 9)[[0, 2]])
  assert len(np.unique(packed.index["objID"])) == len(packed)


def test_impossible_pixels_zeroed_or_dropped_and_reported_apart_from_nonfinite(tmp_path):
  images = _images(4, 0)
  images[0, 1, 2, 3] = 1e30
  images[2, 0, 0, 0] = -5e3
  images[1, 4, 4, 4] = np.nan
  formats.write_unlabelled(tmp_path / "u.npy", images)
  zeroed = store.pack_store(tmp_path, "unlabelled", tmp_path / "cache")
  assert zeroed.summary["out_of_bounds"]["pixels"] == 2 and zeroed.summary["out_of_bounds"]["objects"] == 2
  assert zeroed.summary["nonfinite"]["pixels"] == 1 and zeroed.summary["nonfinite"]["objects"] == 1
  expected = images.copy()
  expected[0, 1, 2, 3] = expected[2, 0, 0, 0] = expected[1, 4, 4, 4] = 0.0
  np.testing.assert_array_equal(zeroed.images, expected)
  dropped = store.pack_store(tmp_path, "unlabelled", tmp_path / "cache", nan_policy="drop")
  assert dropped.index["record"].tolist() == [3]
  np.testing.assert_array_equal(dropped.images, images[3:])
  with pytest.raises(DataFormatError, match=r"u.npy, record 0: 1 pixels outside"):
    store.pack_store(tmp_path, "unlabelled", tmp_path / "cache", nan_policy="raise")


def test_big_files_pack_in_chunks_and_a_bad_late_chunk_retracts_its_file(labelled_dir, tmp_path, monkeypatch):
  directory, originals = labelled_dir
  monkeypatch.setattr(formats, "CHUNK_RECORDS", 2)
  cache = tmp_path / "cache"
  packed = store.pack_store(directory, "labelled", cache)
  names = sorted(originals)
  np.testing.assert_array_equal(packed.images, np.concatenate([originals[n][0] for n in names]))
  np.testing.assert_array_equal(packed.index["record"], [0, 1, 2, 0, 0, 1])
  # A file whose third record (in its second chunk) is bad, packed before good files: it is retracted whole.
  formats.write_labelled(directory / "0bad.npy", [900, 901, 902], _images(3, 7), ["STAR", "STAR", "COMET"], [0] * 3)
  skipped = store.pack_store(directory, "labelled", cache, skip_bad_files=True)
  assert [b["path"] for b in skipped.summary["bad_files"]] == [str(directory / "0bad.npy")]
  np.testing.assert_array_equal(skipped.images, packed.images)
  np.testing.assert_array_equal(skipped.index["objID"], packed.index["objID"])
  assert skipped.summary["n_records"] == 6 and skipped.files[skipped.index["file"][0]].endswith("a.npy")


def test_suspect_rows_name_the_file_and_record_of_the_most_extreme_images(labelled_dir, tmp_path):
  directory, originals = labelled_dir
  images = _images(2, 3)
  images[1, 2, 10, 10] = 9e5  # in bounds, so packed, but the most extreme of the batch
  formats.write_labelled(directory / "d.npy", [50, 51], images, ["STAR", "GALAXY"], [0, 0])
  packed = store.pack_store(directory, "labelled", tmp_path / "cache")
  batch = np.array([0, 7, 4, 6])
  rows = packed.suspect_rows(batch, top=2)
  assert [r["index"] for r in rows] == [7, int(batch[np.argsort(-np.abs(packed.read(batch)).reshape(4, -1).max(1))[1]])]
  assert rows[0] == {"index": 7, "file": str(directory / "d.npy"), "record": 1, "objID": 51,
                     "max_abs_pixel": 9e5, "nonfinite_pixels": 0}
  text = store.describe_rows(rows)
  assert f"{directory / 'd.npy'}, record 1 (objID 51): max |pixel| 9e+05" in text


def test_build_directories_of_killed_packs_are_removed_but_not_a_live_packers(labelled_dir, tmp_path, caplog):
  directory, _ = labelled_dir
  stores = tmp_path / "cache" / "stores"
  key = store.fingerprint(formats.resolve_paths(directory), "labelled", "zero", False)
  own, dead, live = (stores / f".partial-{k}-x" for k in (key, "0" * 24, "1" * 24))
  for folder in (own, dead, live):
    folder.mkdir(parents=True)
    (folder / "images.npy").write_bytes(b"partial")
  with store.exclusive_lock(stores / f".{'1' * 24}.lock", "packing a store") as locked:  # a live packer
    assert locked
    packed = store.pack_store(directory, "labelled", tmp_path / "cache")
    assert not own.exists() and not dead.exists() and live.exists()
  assert packed.root.name == key and "left by a killed pack" in caplog.text
  assert sorted(p.name for p in stores.iterdir()) == sorted([key, live.name])  # lock files removed on release


def test_a_second_packer_of_the_same_inputs_waits_for_the_first_and_reuses_its_store(labelled_dir, tmp_path, caplog):
  directory, _ = labelled_dir
  cache = tmp_path / "cache"
  key = store.fingerprint(formats.resolve_paths(directory), "labelled", "zero", False)
  result = {}
  with store.exclusive_lock(cache / "stores" / f".{key}.lock", "packing the same store"):
    waiter = threading.Thread(target=lambda: result.update(packed=store.pack_store(directory, "labelled", cache)))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not (cache / "stores" / key).exists()  # waiting, not packing
    assert f"waiting for pid {os.getpid()}" in caplog.text and "packing the same store" in caplog.text
    # The holder finishes the same store meanwhile (as a concurrent packer would).
    shutil.copytree(store.pack_store(directory, "labelled", tmp_path / "other").root, cache / "stores" / key)
    stamp = os.stat(cache / "stores" / key / "images.npy").st_mtime_ns
  waiter.join(10)
  assert not waiter.is_alive() and result["packed"].root == cache / "stores" / key
  assert os.stat(result["packed"].root / "images.npy").st_mtime_ns == stamp  # reused, not packed again


def test_a_lock_that_must_not_wait_names_its_holder(tmp_path):
  lock = tmp_path / "run.lock"
  with store.exclusive_lock(lock, "training in runs/a"):
    with pytest.raises(store.LockHeldError, match=rf"run.lock is held by pid {os.getpid()} on host .*training in runs/a"):
      with store.exclusive_lock(lock, "training again", wait=False):
        pass
    assert lock.exists()
  assert not lock.exists()
  with store.exclusive_lock(lock, "training", wait=False) as locked:  # free again
    assert locked
