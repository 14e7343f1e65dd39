"""Simulated data sets in the study's exact on-disk layout, with truth in separate files.

`simulate_dataset` writes
  out_dir/labelled/NNNNNN.npy    1-13 records each, fields (objID, image, class, z) as the study's
  out_dir/unlabelled/NNNNNNN.npy one record each, field (image)
  out_dir/truth/labelled_truth.npz, out_dir/truth/unlabelled_truth.npz  (no pickles)
  out_dir/manifest.json          parameters, simulator version, seed and counts
into a temporary sibling folder renamed into place at the end. Each object's randomness comes from
`SeedSequence(seed, spawn_key=(stream, index))` and its field's conditions from
`SeedSequence(seed, spawn_key=(FIELD_STREAM, stream, index // objects_per_field))`, so the output is
byte-identical for a given seed whatever the number of worker processes.

A cutout is made as a real one is: the scene (the central object, its field neighbours and the faint
background) is drawn on native pixel grids, one per band, observed with SDSS noise, and the central
object is kept only if the r-band detection finds it with S/N >= detect_snr and unsaturated (otherwise
a new object of the same kind is drawn); the cutout is then interpolated onto the r grid at the
detection's windowed centroid (`render.resample_to_cutout`).
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

LABELLED_STREAM, UNLABELLED_STREAM, LAYOUT_STREAM, FIELD_STREAM = 0, 1, 2, 3
PRESCREEN_FRACTION = 0.6
MAX_ATTEMPTS = 400  # draws of a kind's object before giving up on detecting one (never reached in practice)
CHUNK_OBJECTS = 64
# SDSS objID bit layout (skyVersion 59-62, rerun 48-58, run 32-47, camcol 29-31, field 16-28,
# object 0-15). Simulated IDs use rerun 301, a run derived from the seed, the object's camcol,
# and (field, object) from its index, so IDs are unique within a data set.
OBJECTS_PER_FIELD = 60000


@dataclasses.dataclass(frozen=True)
class Cutout:
  """One simulated stamp with everything known about it (positions in cutout pixels)."""
  image: np.ndarray  # (5, 64, 64) float32 nanomaggies, NaN beyond frame edges
  mask: np.ndarray   # (64, 64) uint8 truth segmentation
  central: populations.Source
  neighbours: list  # the field sources with pixels in the mask or their centre in the stamp
  conditions: populations.Conditions
  snr_r: float  # matched-filter S/N of the central object in r (native pixels)
  detect_snr: float  # the detection's S/N: 5 px aperture at the windowed centroid, as on real frames
  saturated: bool
  has_defect: bool
  attempts: int = 1  # objects drawn until one was detected


def object_rng(seed: int, stream: int, index: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


def field_conditions(seed: int, stream: int, index: int, params: P.SimParams) -> populations.Conditions:
  """The conditions of the field object `index` of a stream belongs to."""
  field = index // params.objects_per_field
  rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(FIELD_STREAM, stream, field)))
  return populations.sample_field(rng, params)


def plausibly_detectable(source: populations.Source, conditions: populations.Conditions, snr: float) -> bool:
  """False when the object's expected 5 px aperture S/N is below 60% of the threshold (a Gaussian
  approximation of object x PSF, which overestimates the measured S/N by ~1.3): skips rendering
  objects that noise cannot lift to detection (of 110 rendered draws below it, none was detected)."""
  sigma_psf = conditions.psf_fwhm_arcsec[2] / 2.3548 / P.PIXEL_SCALE_ARCSEC
  sigma_obj = source.r_half_arcsec / 1.1774 / P.PIXEL_SCALE_ARCSEC
  radius = 5.0
  enclosed = 1.0 - np.exp(-radius ** 2 / (2 * (sigma_psf ** 2 + sigma_obj ** 2)))
  noise = conditions.sky_sigma_nmgy()[2] * np.sqrt(np.pi) * radius
  return float(source.flux_nmgy()[2] * enclosed / noise) >= PRESCREEN_FRACTION * snr


def sky_residual(rng: np.random.Generator, sigma_nmgy, band_correlation: float) -> np.ndarray:
  """(5,) the residual sky of one cutout: Gaussian, sigma_nmgy per band, every pair of bands correlated by
  `band_correlation` (a component common to the bands plus one of each band's own)."""
  common, own = rng.normal(), rng.normal(0, 1, 5)
  return (np.sqrt(band_correlation) * common + np.sqrt(1 - band_correlation) * own) * np.asarray(sigma_nmgy)


def draw_scene(rng: np.random.Generator, params: P.SimParams, field: populations.Conditions, kind: str):
  """One attempt: conditions at the object, central object, neighbours, background, band shifts."""
  conditions = populations.object_conditions(rng, field, params)
  central = populations.sample_central(rng, params, kind=kind, centre=float(render.NATIVE_CENTRE))
  if not plausibly_detectable(central, conditions, params.detect_snr):
    return None
  neighbours = populations.sample_neighbours(rng, params, (central.x, central.y))
  background = populations.sample_faint_background(rng, params, render.GRID)
  shifts = rng.random((5, 2)) if params.resample_bands else np.zeros((5, 2))
  shifts[2] = 0.0  # r is the reference grid
  residual = sky_residual(rng, conditions.sky_residual_nmgy, params.sky_residual_band_correlation)
  return conditions, central, neighbours, background, shifts, residual


def simulate_cutout(rng: np.random.Generator, params: P.SimParams = P.SimParams(),
                    field: populations.Conditions | None = None, kind: str | None = None) -> Cutout:
  """Draws objects of one kind until one is detected, and cuts it out as real cutouts are cut.

  field: the field's conditions (default: a field drawn from rng); kind: the central object's kind
  (default: drawn with params.point_fraction).
  """
  field = populations.sample_field(rng, params) if field is None else field
  kind = populations.sample_kind(rng, params) if kind is None else kind
  for attempt in range(1, MAX_ATTEMPTS + 1):
    drawn = draw_scene(rng, params, field, kind)
    if drawn is None:
      continue
    conditions, central, neighbours, background, shifts, residual = drawn
    sources = [central] + neighbours
    scene = render.PreparedScene(sources, conditions, shifts, background, wings=params.psf_wings)
    # Detection needs the r band only: the other bands are drawn and observed once it is found.
    # The residual sky is an error of the sky subtraction: it is added to the sky-subtracted image.
    native_r, saturated_r = render.observe(scene.bands([2]), conditions, rng, bands=[2])
    native_r = native_r + residual[2]
    found = render.detect_central(native_r[0], conditions, (central.x, central.y), float(residual[2]))
    if not found.detected or found.saturated or found.snr < params.detect_snr:
      continue
    others = [0, 1, 3, 4]
    native_rest, saturated_rest = render.observe(scene.bands(others), conditions, rng, bands=others)
    native_rest = native_rest + residual[others, None, None]
    native = np.stack([native_rest[0], native_rest[1], native_r[0], native_rest[2], native_rest[3]])
    return cut_detected(rng, params, native, saturated_r or saturated_rest, scene, found, sources, conditions,
                        shifts, attempt)
  raise RuntimeError(f"no {kind} detected in {MAX_ATTEMPTS} draws: the SimParams make it undetectable "
                     f"({params.to_json()})")


def cut_detected(rng, params, native, saturated, scene, found, sources, conditions, shifts, attempts) -> Cutout:
  """The cutout of a detected central object, its truth mask and neighbour table."""
  if params.resample_bands:
    image = render.resample_to_cutout(native, found.x, found.y, shifts)
    origin = (found.x - P.CENTRE_PIXEL, found.y - P.CENTRE_PIXEL)
  else:
    image, x0, y0 = render.integer_cutout(native, found.x, found.y)
    origin = (float(x0), float(y0))
  # Truth images are noiseless: drawn directly on the cutout grid.
  objects_gri = scene.objects_gri(origin=origin, size=P.STAMP_SIZE)
  moved = [s.moved(-origin[0], -origin[1]) for s in sources]
  image = image.astype(np.float32)
  has_defect = bool(rng.random() < params.defect_fraction)
  if has_defect:
    image[render.edge_defect_mask(rng)] = np.nan
  gri_sigma = float(np.sqrt(np.sum(conditions.sky_sigma_nmgy()[list(render.GRI)] ** 2)))
  full_mask = render.segmentation_mask(objects_gri, params.mask_threshold_sigma * gri_sigma)
  # Neighbours are the field sources that own mask pixels or whose centre lies in the stamp.
  inside = [(-0.5 <= s.x < P.STAMP_SIZE - 0.5) and (-0.5 <= s.y < P.STAMP_SIZE - 0.5) for s in moved]
  kept = [j for j in range(1, len(moved)) if inside[j] or (full_mask == j + 1).any()]
  relabel = np.zeros(len(moved) + 1, dtype=np.uint8)
  relabel[1] = 1
  relabel[[j + 1 for j in kept]] = np.arange(2, 2 + len(kept), dtype=np.uint8)
  mask = relabel[full_mask]
  snr = render.matched_filter_snr(scene.central_r(), conditions, band=2)
  return Cutout(image=image, mask=mask, central=moved[0], neighbours=[moved[j] for j in kept],
                conditions=conditions, snr_r=snr, detect_snr=float(found.snr), saturated=bool(saturated),
                has_defect=has_defect, attempts=attempts)


def simulate_cutouts(n: int, seed: int, params: P.SimParams = P.SimParams(), stream: int = LABELLED_STREAM,
                     start: int = 0, field: populations.Conditions | None = None) -> list[Cutout]:
  """In-memory cutouts `start .. start+n-1` of a stream (the same objects simulate_dataset writes);
  with `field`, every object is seen in those conditions instead of its field's."""
  out = []
  for i in range(start, start + n):
    conditions = field_conditions(seed, stream, i, params) if field is None else field
    out.append(simulate_cutout(object_rng(seed, stream, i), params, field=conditions))
  return out


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


def truth_rows(cutouts: list[Cutout], obj_ids: list[int], files: list[str], records: list[int],
               fields: list[int] | None = None) -> dict:
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
    "detect_snr": np.array([c.detect_snr for c in cutouts], dtype=np.float32),
    "x": np.array([c.central.x for c in cutouts], dtype=np.float32),
    "y": np.array([c.central.y for c in cutouts], dtype=np.float32),
    "psf_fwhm_arcsec": stack([c.conditions.psf_fwhm_arcsec for c in cutouts], (5,), np.float32),
    "sky_sigma_nmgy": stack([c.conditions.sky_sigma_nmgy() for c in cutouts], (5,), np.float32),
    "field": np.asarray(fields if fields is not None else np.zeros(len(cutouts)), dtype=np.int32),
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
  fields = [i // params.objects_per_field for i in range(first_index, index)]
  return truth_rows(cutouts, ids, files, records, fields)


def run_unlabelled_chunk(task: tuple) -> dict:
  """Simulates and writes unlabelled files for objects [start, stop); returns their truth."""
  root, seed, params_json, start, stop = task
  params = P.SimParams.from_dict(json.loads(params_json))
  cutouts = simulate_cutouts(stop - start, seed, params, UNLABELLED_STREAM, start=start)
  names = [unlabelled_name(i) for i in range(start, stop)]
  for name, cutout in zip(names, cutouts):
    write_unlabelled(Path(root) / "unlabelled" / name, cutout.image[None])
  fields = [i // params.objects_per_field for i in range(start, stop)]
  return truth_rows(cutouts, [-1] * len(cutouts), names, [0] * len(cutouts), fields)


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
