"""classify.supervised_reference: the folds partition the set, every object gets exactly one score, from the one
fold model that did not train on it (its training rows recorded, its checkpoint restored and re-run)."""

from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import load_config
from stargal_jax import inputs as inputs_lib
from stargal_jax import stages, train
from stargal_jax.classify import bootstrap, supervised_reference
from stargal_jax.data import normalize as normalization


class _Images:
  def __init__(self, images):
    self.images = np.asarray(images, np.float32)

  def __len__(self):
    return len(self.images)

  def read(self, indices):
    return self.images[np.asarray(indices)]


def test_folds_partition_the_set_evenly():
  folds = supervised_reference.fold_of(103, 5, seed=0)
  assert set(folds.tolist()) == set(range(5))
  assert sorted(np.bincount(folds).tolist()) == [20, 20, 21, 21, 21]
  np.testing.assert_array_equal(folds, supervised_reference.fold_of(103, 5, seed=0))
  with pytest.raises(ValueError, match="folds"):
    supervised_reference.fold_of(10, 1, seed=0)


def test_every_object_gets_one_out_of_fold_score(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  n, size = 30, 16
  images = rng.normal(0, 1, (n, 5, size, size)).astype(np.float32)
  is_galaxy = rng.random(n) > 0.5
  images[is_galaxy, :, 6:10, 6:10] += 3.0  # something to learn
  stage = load_config("bootstrap", "smoke").supervised_cnn
  stage.folds = 3
  stage.model_kwargs.update(image_size=size, crop=size)
  stage.train.update(steps=4, batch_size=8)
  normalizer = normalization.fit_normalizer(images, "zscore", max_images=n)
  trained_on = []
  original = bootstrap.augmented_batches

  def recording(store, rows, labels, *args, **kwargs):
    trained_on.append(np.sort(rows))
    np.testing.assert_array_equal(labels, is_galaxy[rows].astype(np.float32))
    return original(store, rows, labels, *args, **kwargs)

  monkeypatch.setattr(bootstrap, "augmented_batches", recording)
  store = _Images(images)
  scores = supervised_reference.out_of_fold_scores(stage, store, is_galaxy, normalizer, tmp_path, jax.random.key(0),
                                                   eval_batch_size=8)
  assert scores.shape == (n,) and np.all(np.isfinite(scores))
  folds = supervised_reference.fold_of(n, 3, seed=int(jax.random.randint(jax.random.fold_in(jax.random.key(0), 0),
                                                                          (), 0, 2**31 - 1)))
  for k in range(3):
    held_out = np.flatnonzero(folds == k)
    np.testing.assert_array_equal(trained_on[k], np.flatnonzero(folds != k))  # never its own held-out objects
    result = stages.restore_stage(stage, Path(tmp_path) / "checkpoints" / f"supervised_cnn_fold{k}")
    fetch = inputs_lib.model_images(_Images(images[held_out]), normalizer)
    again = train.predict_in_batches(result, fetch, len(held_out), 8, keys=("z",))["z"][:, 0]
    np.testing.assert_allclose(scores[held_out], again, rtol=1e-5, atol=1e-6)
