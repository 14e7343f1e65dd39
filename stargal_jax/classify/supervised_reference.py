"""The supervised CNN reference: the classifier network trained on the labelled images WITH their labels.

This is the ceiling a label-free design is compared with (`config.eval.supervised_cnn`), not a method: it reads
the labels. k-fold cross-validation (`config.supervised_cnn.folds`) gives every labelled object exactly one
out-of-fold score, from the model that did not see it; each fold trains `config.supervised_cnn` (by default the
same `conv_classifier` and `bce` loss as the bootstrapped design) with dihedral transforms and sub-pixel
shifts, through the project's trainer (checkpoints under `checkpoints/supervised_cnn_fold<k>`, so an
interrupted run resumes).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from stargal_jax import inputs as inputs_lib
from stargal_jax import stages, train
from stargal_jax.classify import bootstrap


class _Rows:
  """A store restricted to some rows (the `len` / `read` interface the batch and predict helpers use)."""

  def __init__(self, store, rows: np.ndarray):
    self.store, self.rows = store, np.asarray(rows)

  def __len__(self) -> int:
    return len(self.rows)

  def read(self, indices) -> np.ndarray:
    return self.store.read(self.rows[np.asarray(indices)])


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
  """(n,) fold index in [0, folds) of each object: a seeded permutation cut into `folds` near-equal parts."""
  if not 2 <= folds <= n:
    raise ValueError(f"config.supervised_cnn.folds must be in [2, {n}], got {folds}")
  assignment = np.empty(n, dtype=np.int64)
  assignment[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
  return assignment


def out_of_fold_scores(stage_config, labelled_store, is_galaxy: np.ndarray, normalizer: dict, workdir: Path,
                       key: jax.Array, eval_batch_size: int) -> np.ndarray:
  """(N,) logits (larger = galaxy), each from the fold model that was not trained on that object."""
  is_galaxy = np.asarray(is_galaxy, dtype=np.float32)
  n = len(labelled_store)
  folds = int(stage_config.folds)
  assignment = fold_of(n, folds, seed=int(jax.random.randint(jax.random.fold_in(key, 0), (), 0, 2**31 - 1)))
  scores = np.full(n, np.nan)
  for k in range(folds):
    held_out, training = np.flatnonzero(assignment == k), np.flatnonzero(assignment != k)
    fold_key = jax.random.fold_in(key, k + 1)
    init_key, data_key, step_key = jax.random.split(fold_key, 3)
    data_seed = int(jax.random.randint(data_key, (), 0, 2**31 - 1))
    batches = bootstrap.augmented_batches(labelled_store, training, is_galaxy[training], normalizer,
                                          float(stage_config.max_shift_px), int(stage_config.train.batch_size),
                                          data_seed)
    name = f"supervised_cnn_fold{k}"
    result = train.train(stages.build_model(stage_config, init_key), stage_config.train,
                         stage_config.loss.to_dict(), stage_config.loss_options.to_dict(), batches, step_key,
                         Path(workdir) / "checkpoints" / name, name)
    fetch = inputs_lib.model_images(_Rows(labelled_store, held_out), normalizer)
    out = train.predict_in_batches(result, fetch, len(held_out), eval_batch_size, keys=("z",))
    scores[held_out] = out["z"][:, 0]
  return scores
