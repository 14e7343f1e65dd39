"""The packed store: exact round trip, provenance, reuse and re-pack, atomicity, batches, subsets."""

import json
import os

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
