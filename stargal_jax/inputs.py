"""From `config.data` to packed stores, the fitted normalisation, and (for simulated data) the truth tables.

`open_stores` opens (packing on first use) both sets with the data layer's reading policies from the config
and says what the data are (`Stores.identity`: the stores' fingerprints, or the default set's manifest), which
a run's identity records. Batches are a pure function of the step (`batch_schedule`); the images of a store
(`model_images`) can name the rows behind a batch (`describe`), which the trainer's non-finite stop prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stargal_jax import default_data, paths, registry
from stargal_jax.simulate import SimParams
from stargal_jax.data import formats
from stargal_jax.data import normalize as normalization
from stargal_jax.data import store as stores


@dataclasses.dataclass(frozen=True)
class Inputs:
  unlabelled: Any  # stores.Store (or TrainingImages): trained on, without labels.
  labelled: Any  # stores.Store: scored; labels used only for evaluation.
  normalizer: dict
  truth: dict[str, np.ndarray] | None  # Simulator truth aligned row by row with `labelled`, when known.
  source: str


@dataclasses.dataclass(frozen=True)
class Stores:
  unlabelled: Any  # stores.Store
  labelled: Any  # stores.Store
  source: str
  truth_path: Path | None  # the simulator's truth of the labelled set (default data only)
  identity: dict  # what the data are: the stores' fingerprints, or the default set's manifest digest


def reading_policies(data_config) -> dict:
  """The data layer's reading policies from `config.data` (defaults for a config.json written before them)."""
  return dict(nan_policy=data_config.nan_policy, skip_bad_files=data_config.skip_bad_files,
              duplicates=data_config.get("duplicates", "raise"),
              max_records_per_file=int(data_config.get("max_records_per_file", formats.MAX_RECORDS_PER_FILE)),
              pixel_bounds=tuple(float(v) for v in data_config.get("pixel_bounds", formats.PIXEL_BOUNDS)))


def open_stores(data_config) -> Stores:
  """Both sets of `config.data` as packed stores (the embedded default data, simulated on first use, when
  neither is given). Raises DataFormatError / FileNotFoundError naming a bad or missing input."""
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
  policies = reading_policies(data_config)
  unlabelled = stores.open_dataset(unlabelled_src, kind="unlabelled", cache_dir=cache, **policies)
  labelled = stores.open_dataset(labelled_src, kind="labelled", cache_dir=cache, **policies)
  if truth_path is None:
    identity = {kind: {"store": store.summary["fingerprint"], "files": len(store.files), "objects": len(store)}
                for kind, store in (("labelled", labelled), ("unlabelled", unlabelled))}
  else:
    # Regenerating the default set rewrites its files (new mtimes, new store fingerprints) with the same content:
    # the manifest, deterministic for a simulator version, sizes and seed, says what the data are.
    manifest = Path(sim.root) / "manifest.json"
    identity = {"default_data": Path(sim.root).name,
                "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                "labelled_objects": len(labelled), "unlabelled_objects": len(unlabelled)}
  return Stores(unlabelled, labelled, source, truth_path, identity)


def load_inputs(data_config, seed: int = 0) -> Inputs:
  """`open_stores`, the normalisation fitted on the unlabelled set, and the simulator's truth when known."""
  opened = open_stores(data_config)
  unlabelled = opened.unlabelled
  if data_config.get("train_on_labelled_images", False):
    unlabelled = TrainingImages((opened.unlabelled, opened.labelled))
  normalizer = normalization.fit_normalizer(unlabelled, data_config.normalization,
                                            max_images=data_config.normalizer_sample, seed=seed)
  truth = _aligned_truth(opened.truth_path, opened.labelled) if opened.truth_path else None
  return Inputs(unlabelled, opened.labelled, normalizer, truth, opened.source)


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

  def subset(self, indices) -> "TrainingImages":
    """A view on some rows, in the order given (indices restart at 0): each run of consecutive indices in one
    part becomes that part's `subset`, so the concatenation keeps the order."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"indices outside 0..{len(self) - 1}")
    part = np.searchsorted(self.offsets, indices, side="right") - 1
    starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]]) if indices.size else np.array([], np.int64)
    ends = np.r_[starts[1:], indices.size]
    return TrainingImages([self.parts[part[a]].subset(indices[a:b] - self.offsets[part[a]])
                           for a, b in zip(starts, ends)])

  def suspect_rows(self, indices, top: int = 5) -> list[dict]:
    """`Store.suspect_rows` over the parts: each part's candidates, the worst `top` of all (same ordering)."""
    indices = np.asarray(indices, dtype=np.int64)
    part = np.searchsorted(self.offsets, indices, side="right") - 1
    rows = [row for k, store in enumerate(self.parts) if np.any(part == k)
            for row in store.suspect_rows(indices[part == k] - self.offsets[k], top)]
    rows.sort(key=lambda row: (-row["nonfinite_pixels"], -row["max_abs_pixel"]))
    return rows[:max(int(top), 0)]


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


class StoreImages:
  """`fetch(indices)` -> normalised NHWC float32 images of a store, the models' input; `describe(indices)`
  names the rows most likely to break a loss (file, record, objID: `Store.suspect_rows`)."""

  def __init__(self, store, normalizer: dict):
    self.store, self.normalizer = store, normalizer

  def __call__(self, indices: np.ndarray) -> np.ndarray:
    x = normalization.normalize(self.normalizer, self.store.read(indices))
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)), dtype=np.float32)

  def describe(self, indices: np.ndarray) -> str:
    return stores.describe_rows(self.store.suspect_rows(indices))


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


def model_images(store, normalizer: dict) -> StoreImages:
  """`fetch(indices)` -> normalised NHWC float32 images, the models' input (see `StoreImages`)."""
  return StoreImages(store, normalizer)


class BatchSchedule:
  """`batch_for_step(step)`: a pure function of the step (deterministic shuffling per epoch from the seed).

  `indices(step)` are the rows of step `step`'s batch; `describe(step)` names its suspect inputs when `fetch`
  can (a `StoreImages`), else None. `augment='dihedral'`: each image of a step's batch mapped by a random
  symmetry of the square (`dihedral`, drawn from (seed, step)), so a model does not spend latent capacity on
  orientation."""

  def __init__(self, n: int, batch_size: int, seed: int, fetch: Callable[[np.ndarray], np.ndarray],
               augment: str = "none"):
    registry.check_choice(augment, AUGMENTATIONS, "augment")
    self.steps_per_epoch = n // batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f"Batch size {batch_size} is larger than the training set ({n} objects).")
    self.n, self.batch_size, self.seed, self.fetch, self.augment = n, batch_size, seed, fetch, augment
    self._epoch_order: dict[int, np.ndarray] = {}  # the current epoch's permutation only

  def indices(self, step: int) -> np.ndarray:
    epoch, position = divmod(step, self.steps_per_epoch)
    if epoch not in self._epoch_order:
      self._epoch_order = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
    return np.sort(self._epoch_order[epoch][position * self.batch_size:(position + 1) * self.batch_size])

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    x = self.fetch(self.indices(step))
    if self.augment == "dihedral":
      x = dihedral(x, np.random.default_rng([self.seed, step, 1]).integers(0, 8, len(x)))
    return {"x": x}

  def describe(self, step: int) -> str | None:
    describe_rows = getattr(self.fetch, "describe", None)
    return describe_rows(self.indices(step)) if describe_rows is not None else None


def batch_schedule(n: int, batch_size: int, seed: int, fetch: Callable[[np.ndarray], np.ndarray],
                   augment: str = "none") -> BatchSchedule:
  """`batch_for_step(step)`, a pure function of the step (see `BatchSchedule`)."""
  return BatchSchedule(n, batch_size, seed, fetch, augment)


def describe(inputs: Inputs) -> dict:
  return {"source": inputs.source, "unlabelled": inputs.unlabelled.summary, "labelled": inputs.labelled.summary,
          "normalizer": json.loads(json.dumps(inputs.normalizer, default=float))}
