"""Validates the simulator against the real SDSS fields: object-level distributions and a classifier two-sample test.

Real reference: the sources above S/N 5 (r band) of the eight fields in shared_data_dir()/sdss_frames, cut
by the project's frame code (`stargal_jax.realism.real_reference`, cached). The six high-latitude fields are
the reference; the M2 field and the Galactic-plane field are reported on their own.

Simulated sets, all detected and cut as real sources are (`stargal_jax.simulate`):
  * matched  - this simulator in each real field's measured conditions (sky, calibration, camcol, PSF width),
               1.5 x as many objects as the field has: the physics test;
  * default  - this simulator with default SimParams (the survey's seeing and sky distribution): the first
               objects of the default data's labelled stream;
  * v1       - the previous simulator (git ref --old-ref), its own default parameters, kept where the same
               aperture S/N (5 px, r band) reaches 5: the 'before';
  * ablations - matched, with one ingredient switched off (no band resampling, no PSF wings, no faint
               background, no neighbours, no sky residual): what each contributes to the two-sample test.
Measurements (`realism.measure_objects`), per r-magnitude bin: concentration, psf_minus_extended, adaptive size,
g-r, r-i, background noise per band, companions; and the r-magnitude distribution itself (number counts).
Statistic: KS distance; match criterion (fixed before looking): KS <= 0.10, or not significant at 1%.
C2ST (`realism.c2st`): real (A) against simulated (B), magnitudes matched, train on one half, AUC on the other,
for several views of the image (which part gives the simulation away).

  python benchmarks/validate_simulator.py [--workers 2] [--seed 2017] [--skip-c2st] [--skip-ablations]

Writes docs/simulator_validation.md, docs/images/sim_examples.png, docs/images/sim_distributions.png,
docs/images/sim_counts.png; intermediate sets are cached under the data cache (validation/).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from stargal_jax import BANDS, morphology, paths, realism
from stargal_jax.simulate import SIM_VERSION, SimParams, dataset, observed
from stargal_jax.simulate import params as P

REPO = Path(__file__).resolve().parents[1]
OLD_REF_DEFAULT = "5b6a6c0"  # the last commit with simulator version 1.0
MATCHED_FACTOR = 1.5
HIGH = "high_latitude"
ABLATIONS = {
  "no_resampling": {"resample_bands": False},
  "no_psf_wings": {"psf_wings": False},
  "no_faint_background": {"faint_background_limit_mag": None},  # set to neighbour_faint_mag below
  "no_neighbours": {"neighbour_density_scale": 0.0},
  "no_sky_residual": {"sky_residual_nmgy": (0.0, 0.0, 0.0, 0.0, 0.0)},
}
C2ST_MAIN_VIEWS = ("all", "band_u", "band_g", "band_r", "band_i", "band_z", "highpass", "lowpass",
                   "background", "background_shuffled", "centre")


def cache_root() -> Path:
  root = paths.cache_dir() / "validation"
  root.mkdir(parents=True, exist_ok=True)
  return root


def simulator_fingerprint() -> str:
  """Hash of the simulator's source: cached sets are redone whenever its code changes."""
  sources = sorted((REPO / "stargal_jax" / "simulate").glob("*.py"))
  return hashlib.sha1(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]


def digest(*parts) -> str:
  return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Simulated sets

def _simulate_chunk(task: tuple) -> dict:
  """Worker: cutouts [start, stop) of one field's stream, in the given conditions."""
  params_json, conditions, seed, stream, start, stop = task
  params = SimParams.from_dict(json.loads(params_json))
  images, kinds, snr = [], [], []
  for i in range(start, stop):
    field = conditions if conditions is not None else dataset.field_conditions(seed, stream, i, params)
    c = dataset.simulate_cutout(dataset.object_rng(seed, stream, i), params, field=field)
    images.append(c.image)
    kinds.append(c.central.kind)
    snr.append(c.detect_snr)
  return {"images": np.stack(images), "kind": np.array(kinds), "snr": np.array(snr)}


def run_pool(tasks: list, workers: int) -> list[dict]:
  if workers <= 1:
    return [_simulate_chunk(t) for t in tasks]
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    return list(pool.imap(_simulate_chunk, tasks))


def real_conditions(conditions: realism.FieldConditions, wings: bool = True):
  """Simulator conditions of a real field: its sky, calibration, camcol, noise level and PSF (r-band width and
  aperture correction -> core and wing share; the other bands' widths)."""
  return observed.field_conditions(conditions.camcol, conditions.sky_dn, conditions.nmgy_per_dn, conditions.gain,
                                   conditions.dark_variance, conditions.psf_fwhm_px, conditions.sky_residual_nmgy,
                                   aperture_correction_mag=conditions.aperture_correction_mag[2],
                                   noise_scale=conditions.noise_ratio, wings=wings)


def matched_set(real: realism.CutoutSet, params: SimParams, seed: int, workers: int, tag: str,
                factor: float = MATCHED_FACTOR, fields: list[str] | None = None) -> tuple[realism.CutoutSet, np.ndarray]:
  """The simulator in each real field's conditions, factor x that field's number of objects (cached)."""
  fields = sorted(set(real.field)) if fields is None else fields
  counts = {f: int(round(factor * np.sum(real.field == f))) for f in fields}
  key = digest(SIM_VERSION, simulator_fingerprint(), params.to_json(), seed, counts, realism.REAL_CACHE_VERSION,
               "matched-2")
  path = cache_root() / f"{tag}-{key}.npz"
  if not path.is_file():
    print(f"simulating {tag}: {sum(counts.values())} cutouts in the conditions of {len(fields)} fields", file=sys.stderr)
    tasks, owners = [], []
    for k, f in enumerate(fields):
      cond = real_conditions(real.conditions[f], wings=params.psf_wings)
      for start in range(0, counts[f], 50):
        tasks.append((params.to_json(), cond, seed, 100 + k, start, min(start + 50, counts[f])))
        owners.append(f)
    parts = run_pool(tasks, workers)
    field = np.concatenate([np.full(len(p["kind"]), f, dtype="<U16") for p, f in zip(parts, owners)])
    np.savez(path, images=np.concatenate([p["images"] for p in parts]), field=field,
             kind=np.concatenate([p["kind"] for p in parts]), snr=np.concatenate([p["snr"] for p in parts]))
  with np.load(path, allow_pickle=False) as d:
    images, field, kind, snr = d["images"], d["field"], d["kind"], d["snr"]
  group = np.array([realism.FIELD_GROUPS[f] for f in field], dtype="<U16")
  zeros = np.zeros(len(field))
  return realism.CutoutSet(images, field, group, snr, zeros, zeros.copy()), kind


def default_set(n: int, seed: int, workers: int) -> tuple[realism.CutoutSet, np.ndarray]:
  """The first n objects of the default data's labelled stream (default SimParams, survey conditions)."""
  params = SimParams()
  key = digest(SIM_VERSION, simulator_fingerprint(), params.to_json(), seed, n, "default-1")
  path = cache_root() / f"default-{key}.npz"
  if not path.is_file():
    print(f"simulating default: {n} cutouts", file=sys.stderr)
    tasks = [(params.to_json(), None, seed, dataset.LABELLED_STREAM, s, min(s + 50, n)) for s in range(0, n, 50)]
    parts = run_pool(tasks, workers)
    np.savez(path, images=np.concatenate([p["images"] for p in parts]), kind=np.concatenate([p["kind"] for p in parts]),
             snr=np.concatenate([p["snr"] for p in parts]))
  with np.load(path, allow_pickle=False) as d:
    images, kind, snr = d["images"], d["kind"], d["snr"]
  field = np.array([f"sim{i // params.objects_per_field:03d}" for i in range(len(kind))], dtype="<U16")
  zeros = np.zeros(len(kind))
  return realism.CutoutSet(images, field, np.full(len(kind), "default", "<U16"), snr, zeros, zeros.copy()), kind


OLD_SCRIPT = r"""
import json, sys
import numpy as np
from stargal_jax.simulate import SimParams, simulate_cutouts
n, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
images, kinds, snr = [], [], []
yy, xx = np.indices((64, 64))
inside = np.hypot(yy - 32, xx - 32) <= 5.0
for c in simulate_cutouts(n, seed, SimParams()):
  r = np.nan_to_num(c.image[2].astype(np.float64))
  cond = c.conditions
  var = cond.sky_sigma_nmgy()[2] ** 2 + np.clip(r, 0, None) * cond.nmgy_per_dn[2] / cond.gain[2]
  images.append(c.image); kinds.append(c.central.kind)
  snr.append(r[inside].sum() / np.sqrt(var[inside].sum()))
np.savez(out, images=np.stack(images), kind=np.array(kinds), snr=np.array(snr))
"""


def old_set(ref: str, n: int, seed: int) -> tuple[realism.CutoutSet, np.ndarray]:
  """The previous simulator's cutouts (its git tree exported and run in a subprocess), S/N >= 5 kept."""
  key = digest(ref, n, seed, "old-1")
  path = cache_root() / f"v1-{key}.npz"
  if not path.is_file():
    print(f"simulating the old simulator ({ref}): {n} cutouts", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
      archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "stargal_jax"], check=True,
                               capture_output=True).stdout
      archive_path = Path(tmp) / "tree.tar"
      archive_path.write_bytes(archive)
      with tarfile.open(archive_path) as tar:
        tar.extractall(tmp, filter="data")
      env = dict(os.environ, PYTHONPATH=tmp)
      subprocess.run([sys.executable, "-c", OLD_SCRIPT, str(n), str(seed), str(path)], check=True, env=env, cwd=tmp)
  with np.load(path, allow_pickle=False) as d:
    keep = d["snr"] >= realism.REAL_SNR
    images, kind, snr = d["images"][keep], d["kind"][keep], d["snr"][keep]
  zeros = np.zeros(len(kind))
  return realism.CutoutSet(images, np.full(len(kind), "v1", "<U16"), np.full(len(kind), "v1", "<U16"), snr, zeros,
                           zeros.copy()), kind


def measured(cutouts: realism.CutoutSet, tag: str) -> dict:
  """`realism.measure_objects`, cached beside the sets."""
  key = digest(tag, len(cutouts), float(np.nansum(np.asarray(cutouts.images[:50], np.float64))), "measure-1")
  path = cache_root() / f"measure-{tag}-{key}.npz"
  if path.is_file():
    with np.load(path, allow_pickle=False) as d:
      return {k: d[k] for k in d.files}
  values = realism.measure_objects(cutouts)
  np.savez(path, **values)
  return values


# ---------------------------------------------------------------------------------------------
# Two-sample tests

def c2st_cached(tag: str, a: realism.CutoutSet, ma: dict, b: realism.CutoutSet, mb: dict, view: str,
                config: realism.C2STConfig, seed: int) -> dict:
  """`realism.c2st` of real (a) against a simulated set (b), cached by the sets' fingerprints."""
  key = digest(tag, view, dataclasses.asdict(config), seed, len(a), len(b),
               float(np.nansum(np.asarray(b.images[:50], np.float64))), "c2st-1")
  path = cache_root() / f"c2st-{tag}-{view}-{key}.json"
  if path.is_file():
    return json.loads(path.read_text())
  start = time.time()
  result = realism.c2st(np.asarray(a.images), np.asarray(b.images), ma["r_mag"], mb["r_mag"], view=view,
                        config=config, seed=seed)
  result["seconds"] = time.time() - start
  path.write_text(json.dumps(result))
  print(f"C2ST {tag} {view}: AUC {result['auc']:.3f} +- {result['auc_se']:.3f} ({result['seconds']:.0f} s)",
        file=sys.stderr)
  return result


def summarise_rows(rows: list[dict]) -> tuple[int, int]:
  judged = [r for r in rows if r["pass"] is not None]
  return sum(bool(r["pass"]) for r in judged), len(judged)


# ---------------------------------------------------------------------------------------------
# Figures

def lupton(image: np.ndarray, stretch: float = 0.5, q: float = 8.0) -> np.ndarray:
  """gri composite (i red, r green, g blue; Lupton et al. 2004), a G star white (weights 1.8, 1.2, 1.0)."""
  from astropy.visualization import make_lupton_rgb
  g, r, i = (w * np.nan_to_num(np.asarray(image[b], np.float64), nan=0.0) for w, b in zip((1.8, 1.2, 1.0), (1, 2, 3)))
  with np.errstate(invalid="ignore", divide="ignore"):
    return make_lupton_rgb(i, r, g, stretch=stretch, Q=q, minimum=0.0)


def save_png(fig, path: Path) -> None:
  import io
  from PIL import Image
  import matplotlib.pyplot as plt
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=100)
  plt.close(fig)
  Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def draw_examples(real: realism.CutoutSet, mr: dict, sim: realism.CutoutSet, ms: dict, path: Path,
                  per_side: int = 5, seed: int = 0) -> None:
  """Rows: r-magnitude bins; left: real high-latitude cutouts, right: matched simulated ones (random picks)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rng = np.random.default_rng(seed)
  labels = realism.bin_labels()
  fig, axes = plt.subplots(len(labels), 2 * per_side, figsize=(1.25 * 2 * per_side, 1.35 * len(labels)))
  for row, label in enumerate(labels):
    for side, (cut, m) in enumerate(((real, mr), (sim, ms))):
      pool = np.flatnonzero(realism.magnitude_bin(m["r_mag"]) == row)
      picks = rng.choice(pool, min(per_side, len(pool)), replace=False) if len(pool) else []
      for col in range(per_side):
        ax = axes[row, side * per_side + col]
        ax.set_xticks([])
        ax.set_yticks([])
        if col < len(picks):
          k = picks[col]
          ax.imshow(lupton(np.asarray(cut.images[k])), origin="lower", interpolation="nearest")
          ax.set_title(f"r={m['r_mag'][k]:.1f}", fontsize=6, pad=1)
        else:
          ax.axis("off")
    axes[row, 0].set_ylabel(f"r {label}", fontsize=7)
  fig.text(0.27, 0.995, "real SDSS (six high-latitude fields)", ha="center", va="top", fontsize=8)
  fig.text(0.76, 0.995, f"simulated v{SIM_VERSION}, same conditions", ha="center", va="top", fontsize=8)
  fig.tight_layout(pad=0.2, rect=(0, 0, 1, 0.975))
  save_png(fig, path)


DISTRIBUTION_PANELS = (("concentration", (0.0, 0.7)), ("psf_minus_extended", (-0.5, 2.5)), ("size_px", (0.8, 4.5)),
                       ("g_r", (-0.5, 2.5)), ("r_i", (-0.5, 2.0)), ("noise_r", (0.018, 0.034)))


def draw_distributions(mr: dict, sets: dict, path: Path) -> None:
  """CDFs per quantity (rows) and magnitude bin (columns): real against each simulated set."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  labels = realism.bin_labels()
  fig, axes = plt.subplots(len(DISTRIBUTION_PANELS), len(labels), figsize=(2.0 * len(labels), 1.55 * len(DISTRIBUTION_PANELS)))
  styles = {"real": ("k", 1.6), "v1": ("tab:red", 0.9), "default": ("tab:orange", 0.9), "matched": ("tab:blue", 1.1)}
  for row, (q, limits) in enumerate(DISTRIBUTION_PANELS):
    for col, label in enumerate(labels):
      ax = axes[row, col]
      for name, m in (("real", mr),) + tuple(sets.items()):
        values = np.sort(realism.finite(np.asarray(m[q])[realism.magnitude_bin(m["r_mag"]) == col]))
        if len(values) < 5:
          continue
        colour, width = styles.get(name, ("grey", 0.8))
        ax.plot(values, np.arange(1, len(values) + 1) / len(values), color=colour, lw=width, label=name)
      ax.set_xlim(*limits)
      ax.tick_params(labelsize=5)
      if row == 0:
        ax.set_title(f"r {label}", fontsize=7)
      if col == 0:
        ax.set_ylabel(q, fontsize=6)
  axes[0, 0].legend(fontsize=5, loc="lower right")
  fig.tight_layout(pad=0.3)
  save_png(fig, path)


def draw_counts(real: realism.CutoutSet, mr: dict, sets: dict, path: Path) -> None:
  """Fraction of sources per magnitude bin: each real field, their total, and the simulated sets."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  labels = realism.bin_labels()
  x = np.arange(len(labels))
  fig, ax = plt.subplots(figsize=(5.2, 3.0))
  for f in sorted(set(real.field)):
    ax.plot(x, realism.counts_fractions(mr["r_mag"][real.field == f]), color="0.7", lw=0.8)
  ax.plot(x, realism.counts_fractions(mr["r_mag"]), color="k", lw=2, label="real (six fields; grey: each)")
  for name, colour in (("v1", "tab:red"), ("default", "tab:orange"), ("matched", "tab:blue")):
    if name in sets:
      ax.plot(x, realism.counts_fractions(sets[name]["r_mag"]), color=colour, lw=1.2, label=name)
  ax.set_xticks(x, labels, fontsize=7)
  ax.set_ylabel("fraction of detected sources", fontsize=7)
  ax.set_xlabel("r (7.4\" aperture)", fontsize=7)
  ax.tick_params(labelsize=7)
  ax.legend(fontsize=6)
  fig.tight_layout()
  save_png(fig, path)
