"""From `config.data` to packed stores, the fitted normalisation, and (for simulated data) the truth tables."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stargal_jax import default_data, paths, registry
from stargal_jax.simulate import SimParams
from stargal_jax.data import normalize as normalization
from stargal_jax.data import store as stores


@dataclasses.dataclass(frozen=True)
class Inputs:
  unlabelled: Any  # stores.Store (or TrainingImages): trained on, without labels.
  labelled: Any  # stores.Store: scored; labels used only for evaluation.
  normalizer: dict
  truth: dict[str, np.ndarray] | None  # Simulator truth aligned row by row with `labelled`, when known.
  source: str


def load_inputs(data_config, seed: int = 0) -> Inputs:
  cache = paths.cache_dir(data_config.cache_dir)
  truth_path = None
  if data_config.labelled or data_config.unlabelled:
    if not (data_config.labelled and data_config.unlabelled):
      raise ValueError("Give both config.data.labelled and config.data.unlabelled (or neither, for the "
                       "embedded default data).")
    labelled_src, unlabelled_src = data_config.labelled, data_config.unlabelled
    source = f"labelled={labelled_src} unlabelled={unlabelled_src}"
  else:
    sim = default_data.ensure_default_data(
        cache, n_labelled=data_config.default_n_labelled, n_unlabelled=data_config.default_n_unlabelled,
        seed=data_config.default_seed, workers=data_config.workers or None,
        params=SimParams.from_dict(data_config.sim_params.to_dict()))
    labelled_src, unlabelled_src, truth_path = str(sim.labelled_dir), str(sim.unlabelled_dir), sim.truth_path
    source = f"embedded simulator ({sim.root})"
  common = dict(cache_dir=cache, nan_policy=data_config.nan_policy, skip_bad_files=data_config.skip_bad_files)
  unlabelled = stores.open_dataset(unlabelled_src, kind="unlabelled", **common)
  labelled = stores.open_dataset(labelled_src, kind="labelled", **common)
  if data_config.get("train_on_labelled_images", False):
    unlabelled = TrainingImages((unlabelled, labelled))
  normalizer = normalization.fit_normalizer(unlabelled, data_config.normalization,
                                            max_images=data_config.normalizer_sample, seed=seed)
  truth = _aligned_truth(truth_path, labelled) if truth_path else None
  return Inputs(unlabelled, labelled, normalizer, truth, source)


class TrainingImages:
  """Several stores' images as one training set, without their labels (the store interface: `len`, `read`,
  `summary`, an index of objID and label -1). The labelled images may be trained on; their classes may not."""

  def __init__(self, parts):
    self.parts = tuple(parts)
    self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
    self.summary = {"parts": [p.summary for p in self.parts], "n_objects": int(self.offsets[-1]),
                    "note": "training images of all parts; no labels"}
    self.index = {"objID": np.concatenate([np.asarray(p.index["objID"]) for p in self.parts]),
                  "label": np.full(int(self.offsets[-1]), -1, dtype=np.int64)}

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def read(self, indices) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64)
    part = np.searchsorted(self.offsets, indices, side="right") - 1
    out = None
    for k, store in enumerate(self.parts):
      chosen = np.flatnonzero(part == k)
      if chosen.size == 0:
        continue
      images = store.read(indices[chosen] - self.offsets[k])
      if out is None:
        out = np.empty((len(indices),) + images.shape[1:], dtype=images.dtype)
      out[chosen] = images
    if out is None:
      raise ValueError("no indices to read")
    return out


def _aligned_truth(truth_path: Path, labelled) -> dict[str, np.ndarray]:
  """Per-object truth rows reordered to the store's order (matched by objID); neighbour table re-indexed."""
  with np.load(truth_path, allow_pickle=False) as f:
    truth = {k: f[k] for k in f.files}
  row_of = {int(o): i for i, o in enumerate(truth["objID"])}
  order = np.array([row_of[int(o)] for o in labelled.index["objID"]])
  per_object = {k: v[order] for k, v in truth.items() if not k.startswith("nb_") and len(v) == len(order)}
  new_row = np.empty(len(order), dtype=np.int64)
  new_row[order] = np.arange(len(order))
  nb = {k: v for k, v in truth.items() if k.startswith("nb_")}
  if "nb_object" in nb:
    nb["nb_object"] = new_row[nb["nb_object"]]
  return {**per_object, **nb}


def model_images(store, normalizer: dict) -> Callable[[np.ndarray], np.ndarray]:
  """`fetch(indices)` -> normalised NHWC float32 images, the models' input."""

  def fetch(indices: np.ndarray) -> np.ndarray:
    x = normalization.normalize(normalizer, store.read(indices))
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)), dtype=np.float32)

  return fetch


def dihedral(images: np.ndarray, transforms: np.ndarray) -> np.ndarray:
  """NHWC images each mapped by one of the 8 symmetries of the square: transform t = 4 f + k is k quarter turns,
  then a left-right flip if f = 1. A cutout's object is centred, so the class does not change."""
  out = np.empty_like(images)
  for t in np.unique(transforms):
    chosen = transforms == t
    turned = np.rot90(images[chosen], k=int(t) % 4, axes=(1, 2))
    out[chosen] = turned[:, :, ::-1] if t >= 4 else turned
  return out


AUGMENTATIONS = ("none", "dihedral")


def batch_schedule(n: int, batch_size: int, seed: int, fetch: Callable[[np.ndarray], np.ndarray],
                   augment: str = "none"):
  """`batch_for_step(step)`: a pure function of the step (deterministic shuffling per epoch from the seed).

  `augment='dihedral'`: each image of a step's batch mapped by a random symmetry of the square (`dihedral`,
  drawn from (seed, step)), so a model does not spend latent capacity on orientation."""
  registry.check_choice(augment, AUGMENTATIONS, "augment")
  steps_per_epoch = n // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"Batch size {batch_size} is larger than the training set ({n} objects).")
  cached: dict[int, np.ndarray] = {}

  def batch_for_step(step: int) -> dict[str, np.ndarray]:
    epoch, position = divmod(step, steps_per_epoch)
    if epoch not in cached:
      cached.clear()
      cached[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    indices = cached[epoch][position * batch_size:(position + 1) * batch_size]
    x = fetch(np.sort(indices))
    if augment == "dihedral":
      x = dihedral(x, np.random.default_rng([seed, step, 1]).integers(0, 8, len(x)))
    return {"x": x}

  return batch_for_step


def describe(inputs: Inputs) -> dict:
  return {"source": inputs.source, "unlabelled": inputs.unlabelled.summary, "labelled": inputs.labelled.summary,
          "normalizer": json.loads(json.dumps(inputs.normalizer, default=float))}
