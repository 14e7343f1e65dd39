"""The real-frame distribution: train and score on real SDSS cutouts, judged where no labels are needed.

Data: sources detected on the r band (S/N >= REAL_DETECT_SNR in a 2" aperture, `sdss_frames.detect_sources`) of
the six high-latitude fields of `shared_data_dir()/sdss_frames`, cut with `sdss_frames.cut_cutouts` (complete
cutouts only), cached once as unlabelled study-format files. A cell trains the design on them without labels, as
it trains on the unlabelled simulated set, and scores the same cutouts label-free. Without labels it reports, per
r-magnitude bin:
- agreement with the classical indices: Spearman's rho of the score with psfMag - cModelMag and with the
  concentration index, and the fraction of objects on which the score's class and SDSS's cut (psfMag - cModelMag
  > 0.145) agree, with the score cut at the config's prior star fraction and at the fraction SDSS's cut calls
  point-like (the comparison of the two orderings, free of the prior);
- a two-sample check against the simulated default data: the KS statistic between the score distributions of
  the real set and of the same design's default-data cell (each score standardised by its own set's median and
  1.4826 MAD), beside the same KS statistic for psfMag - cModelMag itself (how far the simulator is from the sky
  in the index, for reference).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from scipy import stats

from stargal_jax import inputs as inputs_lib
from stargal_jax import morphology, paths
from stargal_jax.classify import pipelines, scoring
from stargal_jax.data import formats
from stargal_jax.data import normalize as normalization
from stargal_jax.data import store as stores
from stargal_jax.robustness import cells

REAL = cells.REAL
HIGH_LATITUDE_FIELDS = ("001035-6-0017", "001043-5-0025", "001992-1-0087", "003184-2-0169", "007264-3-0111",
                        "008162-6-0080")
REAL_DETECT_SNR = 5.0
REAL_SET_VERSION = 1
SDSS_INDEX = "baseline_sdss_psf_minus_cmodel"


def real_set_dir(cache: Path, fields=HIGH_LATITUDE_FIELDS, snr: float = REAL_DETECT_SNR, log=print) -> Path:
  """The cached real unlabelled set (one .npy file per field), cut on first use."""
  from stargal_jax import sdss_frames  # astropy and SEP only when real frames are used
  tag = hashlib.sha256(json.dumps([REAL_SET_VERSION, list(fields), snr]).encode()).hexdigest()[:10]
  root = Path(cache) / "real_frames" / f"real-v{REAL_SET_VERSION}-snr{snr:g}-{tag}"
  if (root / "manifest.json").is_file():
    return root
  frames_dir = paths.shared_data_dir() / "sdss_frames"
  missing = [f for f in fields if not (frames_dir / f).is_dir()]
  if missing:
    raise FileNotFoundError(f"real frames {missing} not found under {frames_dir} (set STARGAL_SHARED_DATA)")
  root.parent.mkdir(parents=True, exist_ok=True)
  building = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
  try:
    (building / "unlabelled").mkdir()
    counts = {}
    for name in fields:
      field = sdss_frames.load_field(frames_dir / name)
      sources = sdss_frames.detect_sources(field, snr=snr)
      images, _, meta = sdss_frames.cut_cutouts(field, np.stack([sources["x"], sources["y"]], axis=1))
      complete = meta["n_nan"] == 0
      formats.write_unlabelled(building / "unlabelled" / f"{name}.npy", images[complete])
      counts[name] = int(complete.sum())
      log(f"[robustness] real frames: {name}: {counts[name]} cutouts (S/N >= {snr:g})")
    (building / "manifest.json").write_text(json.dumps({"fields": list(fields), "snr": snr, "counts": counts}))
    building.rename(root)
  finally:
    shutil.rmtree(building, ignore_errors=True)
  return root


class Subset:
  """The first `n` objects of a random order (fixed seed) of a store, with the store interface."""

  def __init__(self, store, n: int | None, seed: int = 0):
    self.store = store
    order = np.arange(len(store)) if n is None or n >= len(store) else np.sort(
        np.random.default_rng(seed).choice(len(store), n, replace=False))
    self.rows = order
    self.summary = dict(store.summary, subset=len(order))
    # A packed store's index is a structured array (objID, label, file, record); a plain store's may be a dict.
    index = store.index
    self.index = index[order] if isinstance(index, np.ndarray) else {k: np.asarray(v)[order] for k, v in index.items()}

  def __len__(self) -> int:
    return len(self.rows)

  def read(self, indices) -> np.ndarray:
    return self.store.read(self.rows[np.asarray(indices)])

  def suspect_rows(self, indices, top: int = 5) -> list[dict]:
    return self.store.suspect_rows(self.rows[np.asarray(indices)], top)


def real_store(config, size: str, log=print):
  cache = paths.cache_dir(config.data.cache_dir)
  root = real_set_dir(cache, log=log)
  store = stores.open_dataset(str(root / "unlabelled"), kind="unlabelled", cache_dir=cache,
                              nan_policy=config.data.nan_policy)
  return Subset(store, cells.REAL_SET_SIZES[size])


def standardised(values: np.ndarray) -> np.ndarray:
  centre, scale = normalization.robust_center_scale(values)
  return (np.asarray(values, np.float64) - centre) / (scale if scale > 0 else 1.0)


def _bins(r_mag: np.ndarray, mag_bins) -> list[tuple[str, np.ndarray]]:
  edges = [-np.inf, *sorted(mag_bins), np.inf]
  labels = [f"r<{edges[1]:g}", *[f"{a:g}<=r<{b:g}" for a, b in zip(edges[1:-2], edges[2:-1])], f"r>={edges[-2]:g}"]
  return [("all", np.isfinite(r_mag))] + [(label, (r_mag >= lo) & (r_mag < hi))
                                          for label, lo, hi in zip(labels, edges[:-1], edges[1:])]


def agreement(scored: dict, measurements: dict, mag_bins) -> list[dict]:
  """Per r bin: rank agreement of the score with the indices, and class agreement with SDSS's cut."""
  score, pred = scored["score"], scored["pred"].astype(bool)
  sdss = measurements[SDSS_INDEX]
  sdss_galaxy = sdss > morphology.SDSS_EXTENDED_CUT_MAG
  matched = score > np.quantile(score, 1.0 - sdss_galaxy.mean())  # as many galaxies as SDSS's cut calls
  rows = []
  for label, sel in _bins(measurements["r_mag"], mag_bins):
    row = {"label": label, "n": int(sel.sum())}
    if sel.sum() >= 3:
      row.update(spearman_sdss=float(stats.spearmanr(score[sel], sdss[sel]).statistic),
                 spearman_concentration=float(stats.spearmanr(score[sel],
                                                              measurements["baseline_concentration"][sel]).statistic),
                 agree_prior=float(np.mean(pred[sel] == sdss_galaxy[sel])),
                 agree_matched=float(np.mean(matched[sel] == sdss_galaxy[sel])),
                 galaxy_fraction_score=float(pred[sel].mean()), galaxy_fraction_sdss=float(sdss_galaxy[sel].mean()))
    rows.append(row)
  return rows


def two_sample(real_score, real_measurements, sim_score, sim_measurements, mag_bins) -> list[dict]:
  """Per r bin: KS statistic (and p-value) real vs simulated of the standardised score and of psf - cModel."""
  real_z, sim_z = standardised(real_score), standardised(sim_score)
  sim_bins = dict(_bins(sim_measurements["r_mag"], mag_bins))
  rows = []
  for label, sel in _bins(real_measurements["r_mag"], mag_bins):
    other = sim_bins[label]
    row = {"label": label, "n_real": int(sel.sum()), "n_sim": int(other.sum())}
    if sel.sum() >= 5 and other.sum() >= 5:
      ks_score = stats.ks_2samp(real_z[sel], sim_z[other])
      ks_index = stats.ks_2samp(real_measurements[SDSS_INDEX][sel], sim_measurements[SDSS_INDEX][other])
      row.update(ks_score=float(ks_score.statistic), p_score=float(ks_score.pvalue),
                 ks_sdss_index=float(ks_index.statistic), p_sdss_index=float(ks_index.pvalue))
    rows.append(row)
  return rows


def _default_cell_scores(out: Path, spec: cells.CellSpec):
  """(seed-0 score, measurements) of the same design's finished default-data cell, or None."""
  default = dataclasses.replace(spec, distribution="default")
  directory = cells.cell_dir(out, default)
  if cells.finished(out, default) is None:
    return None
  with np.load(directory / "predictions.npz", allow_pickle=False) as f:
    score = np.asarray(f["score"], np.float64)
  config = cells.cell_config(default)
  labelled = inputs_lib.load_inputs(config.data, seed=config.seed).labelled
  measurements = scoring.image_measurements(labelled)
  return (score[0] if score.ndim == 2 else score), measurements


def _real_measurements(store) -> dict:
  """The classical indices and magnitudes of the real cutouts a cell used (the rows of its store)."""
  return {k: v[store.rows] for k, v in scoring.image_measurements(store.store).items()}


def add_two_sample(out: Path, spec: cells.CellSpec, log=print) -> dict | None:
  """A finished real cell without the two-sample check, because its design's default-data cell finished after it:
  the check added from the cell's saved seed-0 score (the cell itself is not run again). Otherwise the cell as
  it is (None when unfinished)."""
  cell = cells.finished(out, spec)
  if cell is None or "two_sample" in cell:
    return cell
  default = _default_cell_scores(out, spec)
  if default is None:
    return cell
  config = cells.cell_config(spec)
  directory = cells.cell_dir(out, spec)
  with np.load(directory / "predictions.npz", allow_pickle=False) as f:
    score = np.asarray(f["score"], np.float64)[0]
  cell["two_sample"] = two_sample(score, _real_measurements(real_store(config, spec.size, log)), *default,
                                  tuple(config.data.mag_bins))
  log(f"[robustness] {spec.name}: two-sample check against the default cell added")
  return cells.write_cell(directory, cell)


def run_real_cell(out: Path, spec: cells.CellSpec, log=print) -> dict:
  """Trains `spec.config` on the real cutouts without labels, scores them, and compares (module docstring)."""
  t0 = time.perf_counter()
  config = cells.cell_config(spec)
  directory = cells.cell_dir(out, spec)
  directory.mkdir(parents=True, exist_ok=True)
  store = real_store(config, spec.size, log)
  normalizer = normalization.fit_normalizer(store, config.data.normalization,
                                            max_images=config.data.normalizer_sample, seed=config.seed)
  normalization.save_normalizer(directory / "normalizer.json", normalizer)
  inputs = inputs_lib.Inputs(unlabelled=store, labelled=store, normalizer=normalizer, truth=None,
                             source=f"real SDSS frames {', '.join(HIGH_LATITUDE_FIELDS)}")
  log(f"[robustness] {spec.name}: {len(store)} real cutouts")
  latents = np.asarray(pipelines.train_latents(config, inputs, directory, jax.random.key(config.seed)), np.float64)
  measurements = _real_measurements(store)
  mag_bins = tuple(config.data.mag_bins)
  scored = [scoring.score_latents(z, measurements, config, seed=int(config.seed) + s) for s, z in enumerate(latents)]
  np.savez(directory / "predictions.npz", score=np.stack([s["score"] for s in scored]).astype(np.float32),
           pred=np.stack([s["pred"] for s in scored]).astype(np.int8), r_mag=measurements["r_mag"])
  result = {"spec": dataclasses.asdict(spec), "pipeline": config.pipeline, "n_real": len(store),
            "agreement_per_seed": [agreement(s, measurements, mag_bins) for s in scored]}
  default = _default_cell_scores(out, spec)
  if default is not None:
    result["two_sample"] = two_sample(scored[0]["score"], measurements, *default, mag_bins)
  result["wall_seconds"] = time.perf_counter() - t0
  return cells.write_cell(directory, result)
