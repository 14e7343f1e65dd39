"""Simulated data sets in the study's exact on-disk layout, with truth in separate files.

`simulate_dataset` writes
  out_dir/labelled/NNNNNN.npy    1-13 records each, fields (objID, image, class, z) as the study's
  out_dir/unlabelled/NNNNNNN.npy one record each, field (image)
  out_dir/truth/labelled_truth.npz, out_dir/truth/unlabelled_truth.npz  (no pickles)
  out_dir/manifest.json          parameters, simulator version, seed and counts
into a temporary sibling folder renamed into place at the end. Each object's randomness comes from
`SeedSequence(seed, spawn_key=(stream, index))`, so the output is byte-identical for a given seed
whatever the number of worker processes.
"""

import dataclasses
import json
import multiprocessing
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from stargal_jax.data.formats import CLASS_CODES, write_labelled, write_unlabelled
from stargal_jax.simulate import params as P
from stargal_jax.simulate import populations, render

LABELLED_STREAM, UNLABELLED_STREAM, LAYOUT_STREAM = 0, 1, 2
CHUNK_OBJECTS = 64
# SDSS objID bit layout (skyVersion 59-62, rerun 48-58, run 32-47, camcol 29-31, field 16-28,
# object 0-15). Simulated IDs use rerun 301, a run derived from the seed, the object's camcol,
# and (field, object) from its index, so IDs are unique within a data set.
OBJECTS_PER_FIELD = 60000


@dataclasses.dataclass(frozen=True)
class Cutout:
  """One simulated stamp with everything known about it."""
  image: np.ndarray  # (5, 64, 64) float32 nanomaggies, NaN beyond frame edges
  mask: np.ndarray   # (64, 64) uint8 truth segmentation
  central: populations.Source
  neighbours: list
  conditions: populations.Conditions
  snr_r: float
  saturated: bool
  has_defect: bool


def object_rng(seed: int, stream: int, index: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


def simulate_cutout(rng: np.random.Generator, params: P.SimParams = P.SimParams()) -> Cutout:
  """Draws conditions and sources, renders, adds SDSS noise, saturation and edge defects."""
  conditions = populations.sample_conditions(rng, params)
  central = populations.sample_central(rng, params)
  neighbours = populations.sample_neighbours(rng, params)
  sources = [central] + neighbours
  noiseless, objects_gri, central_r = render.render_scene(sources, conditions)
  image, saturated = render.observe(noiseless, conditions, rng)
  has_defect = bool(rng.random() < params.defect_fraction)
  if has_defect:
    image[render.edge_defect_mask(rng)] = np.nan
  gri_sigma = float(np.sqrt(np.sum(conditions.sky_sigma_nmgy()[list(render.GRI)] ** 2)))
  mask = render.segmentation_mask(objects_gri, params.mask_threshold_sigma * gri_sigma)
  snr = render.matched_filter_snr(central_r, conditions, band=2)
  return Cutout(image=image, mask=mask, central=central, neighbours=neighbours, conditions=conditions,
                snr_r=snr, saturated=saturated, has_defect=has_defect)


def simulate_cutouts(n: int, seed: int, params: P.SimParams = P.SimParams(), stream: int = LABELLED_STREAM,
                     start: int = 0) -> list[Cutout]:
  """In-memory cutouts `start .. start+n-1` of a stream (the same objects simulate_dataset writes)."""
  return [simulate_cutout(object_rng(seed, stream, start + i), params) for i in range(n)]


def make_obj_id(seed: int, index: int, camcol: int) -> int:
  run = 1 + seed % 65000
  field, obj = divmod(index, OBJECTS_PER_FIELD)
  return (2 << 59) | (301 << 48) | (run << 32) | (camcol << 29) | (field << 16) | obj


def file_record_counts(n_labelled: int, seed: int, max_records: int) -> list[int]:
  """How many records each labelled file holds: uniform 1..max_records, the last one trimmed."""
  rng = object_rng(seed, LAYOUT_STREAM, 0)
  counts = []
  while sum(counts) < n_labelled:
    counts.append(int(rng.integers(1, max_records + 1)))
  if counts:
    counts[-1] -= sum(counts) - n_labelled
  return counts


def stack(values: list, shape: tuple, dtype) -> np.ndarray:
  """np.stack that also handles an empty list."""
  return np.stack(values).astype(dtype) if values else np.zeros((0,) + shape, dtype=dtype)


def truth_rows(cutouts: list[Cutout], obj_ids: list[int], files: list[str], records: list[int]) -> dict:
  """Per-object truth columns and the flat per-neighbour table, offsets local to this list."""
  stamp = (P.STAMP_SIZE, P.STAMP_SIZE)
  nb = [(row, label + 2, s) for row, c in enumerate(cutouts) for label, s in enumerate(c.neighbours)]
  return {
    "objID": np.array(obj_ids, dtype=np.int64),
    "file": np.array(files, dtype=str),
    "record": np.array(records, dtype=np.int32),
    "mask": stack([c.mask for c in cutouts], stamp, np.uint8),
    "label": np.array([CLASS_CODES[c.central.kind] for c in cutouts], dtype=np.int8),
    "z": np.array([c.central.z for c in cutouts], dtype=np.float32),
    "mag": stack([c.central.mag for c in cutouts], (5,), np.float32),
    "r_half_arcsec": np.array([c.central.r_half_arcsec for c in cutouts], dtype=np.float32),
    "snr_r": np.array([c.snr_r for c in cutouts], dtype=np.float32),
    "psf_fwhm_arcsec": stack([c.conditions.psf_fwhm_arcsec for c in cutouts], (5,), np.float32),
    "sky_sigma_nmgy": stack([c.conditions.sky_sigma_nmgy() for c in cutouts], (5,), np.float32),
    "n_neighbours": np.array([len(c.neighbours) for c in cutouts], dtype=np.int16),
    "has_defect": np.array([c.has_defect for c in cutouts], dtype=bool),
    "saturated": np.array([c.saturated for c in cutouts], dtype=bool),
    "nb_object": np.array([row for row, _, _ in nb], dtype=np.int32),
    "nb_label": np.array([label for _, label, _ in nb], dtype=np.uint8),
    "nb_mag_r": np.array([s.mag[2] for _, _, s in nb], dtype=np.float32),
    "nb_x": np.array([s.x for _, _, s in nb], dtype=np.float32),
    "nb_y": np.array([s.y for _, _, s in nb], dtype=np.float32),
    "nb_is_point": np.array([s.is_point for _, _, s in nb], dtype=bool),
  }


def concatenate_truth(parts: list[dict]) -> dict:
  """Joins chunk truths in order, re-basing nb_object to global rows."""
  offsets = np.cumsum([0] + [len(p["label"]) for p in parts])
  joined = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
  joined["nb_object"] = np.concatenate([p["nb_object"] + off for p, off in zip(parts, offsets)]).astype(np.int32)
  return joined


def save_npz_deterministic(path: Path, arrays: dict) -> None:
  """Like np.savez (loadable with np.load, allow_pickle=False) but byte-reproducible: fixed zip
  timestamps and sorted keys."""
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
    for key in sorted(arrays):
      info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      with archive.open(info, "w", force_zip64=True) as handle:
        np.lib.format.write_array(handle, np.asarray(arrays[key]), allow_pickle=False)


def labelled_name(file_index: int) -> str:
  return f"{file_index:06d}.npy"


def unlabelled_name(index: int) -> str:
  return f"{index:07d}.npy"


def run_labelled_chunk(task: tuple) -> dict:
  """Simulates and writes whole labelled files [first_file, last_file); returns their truth."""
  root, seed, params_json, first_file, counts, first_index = task
  params = P.SimParams.from_dict(json.loads(params_json))
  cutouts, ids, files, records = [], [], [], []
  index = first_index
  for offset, count in enumerate(counts):
    name = labelled_name(first_file + offset)
    batch = simulate_cutouts(count, seed, params, LABELLED_STREAM, start=index)
    batch_ids = [make_obj_id(seed, index + r, c.conditions.camcol) for r, c in enumerate(batch)]
    write_labelled(Path(root) / "labelled" / name, np.array(batch_ids, dtype=np.int64),
                   np.stack([c.image for c in batch]), [c.central.kind for c in batch],
                   np.array([c.central.z for c in batch], dtype=np.float64))
    cutouts += batch
    ids += batch_ids
    files += [name] * count
    records += list(range(count))
    index += count
  return truth_rows(cutouts, ids, files, records)


def run_unlabelled_chunk(task: tuple) -> dict:
  """Simulates and writes unlabelled files for objects [start, stop); returns their truth."""
  root, seed, params_json, start, stop = task
  params = P.SimParams.from_dict(json.loads(params_json))
  cutouts = simulate_cutouts(stop - start, seed, params, UNLABELLED_STREAM, start=start)
  names = [unlabelled_name(i) for i in range(start, stop)]
  for name, cutout in zip(names, cutouts):
    write_unlabelled(Path(root) / "unlabelled" / name, cutout.image[None])
  return truth_rows(cutouts, [-1] * len(cutouts), names, [0] * len(cutouts))


def labelled_tasks(root: Path, seed: int, params: P.SimParams, n_labelled: int) -> list[tuple]:
  """Groups whole labelled files into tasks of about CHUNK_OBJECTS objects."""
  counts = file_record_counts(n_labelled, seed, params.max_records_per_file)
  tasks, group, first_file, first_index, index = [], [], 0, 0, 0
  for file_index, count in enumerate(counts):
    group.append(count)
    index += count
    if sum(group) >= CHUNK_OBJECTS or file_index == len(counts) - 1:
      tasks.append((str(root), seed, params.to_json(), first_file, group, first_index))
      group, first_file, first_index = [], file_index + 1, index
  return tasks


def run_tasks(function, tasks: list, workers: int) -> list[dict]:
  """Runs tasks in order, in worker processes when workers > 1 ('spawn': safe after JAX import)."""
  if workers <= 1 or len(tasks) <= 1:
    return [function(t) for t in tasks]
  with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
    return list(pool.imap(function, tasks))


def simulate_dataset(out_dir, n_labelled: int, n_unlabelled: int, seed: int, workers: int = 1,
                     params: P.SimParams = P.SimParams()) -> Path:
  """Writes a complete simulated data set to out_dir (atomically) and returns its path."""
  out_dir = Path(out_dir)
  if out_dir.exists() and any(out_dir.iterdir()):
    raise FileExistsError(f"{out_dir} exists and is not empty")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  temp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
  try:
    for sub in ("labelled", "unlabelled", "truth"):
      (temp / sub).mkdir()
    labelled = run_tasks(run_labelled_chunk, labelled_tasks(temp, seed, params, n_labelled), workers)
    unlabelled_tasks = [(str(temp), seed, params.to_json(), s, min(s + CHUNK_OBJECTS, n_unlabelled))
                        for s in range(0, n_unlabelled, CHUNK_OBJECTS)]
    unlabelled = run_tasks(run_unlabelled_chunk, unlabelled_tasks, workers)
    for name, parts in (("labelled_truth.npz", labelled), ("unlabelled_truth.npz", unlabelled)):
      save_npz_deterministic(temp / "truth" / name, concatenate_truth(parts) if parts else truth_rows([], [], [], []))
    manifest = {"simulator": "stargal_jax.simulate", "version": P.SIM_VERSION, "seed": seed,
                "n_labelled": n_labelled, "n_unlabelled": n_unlabelled,
                "n_labelled_files": len(file_record_counts(n_labelled, seed, params.max_records_per_file)),
                "params": dataclasses.asdict(params), "bands": list(P.BANDS),
                "pixel_scale_arcsec": P.PIXEL_SCALE_ARCSEC, "units": "nanomaggies"}
    (temp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
      out_dir.rmdir()
    os.rename(temp, out_dir)
  except BaseException:
    shutil.rmtree(temp, ignore_errors=True)
    raise
  return out_dir
