"""How far a set of cutouts is from the sky: a real reference, object-level two-sample tests and a C2ST.

Three parts, each usable on any two sets of cutouts (real against simulated, one simulator version
against another, one field against the rest):
1. The real reference: sources detected above a S/N in the r band of SDSS fields and cut into 64 x 64
   ugriz cutouts by the project's own frame code (`stargal_jax.sdss_frames`), cached per field under
   the data cache with the field's observing conditions (`real_reference`).
2. Label-free object measurements (`measure_objects`: r magnitude, concentration, PSF-minus-extended,
   adaptive size, g-r, r-i, background noise per band, companions) and their two-sample comparison per
   r-magnitude bin with the Kolmogorov-Smirnov distance and its critical value (`compare_by_bin`),
   with a bootstrap over fields for the field-to-field scatter (`field_bootstrap`).
3. The classifier two-sample test (`c2st`): a small CNN learns to tell set A from set B (magnitudes
   matched by resampling B per bin to A's histogram), trained on one half of each, AUC on the other
   half; 0.5 means the classifier cannot tell them apart. `C2ST_VIEWS` are image transforms (one band,
   high-/low-pass, centre masked, centre only, ...) that say which part of the image gives B away.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from stargal_jax import BANDS, morphology, paths

# ----------------------------------------------------------------------------------------------
# 1. The real reference

REAL_SNR = 5.0  # detection: aperture S/N in the r band (sdss_frames.detect_sources' definition)
REAL_CACHE_VERSION = "1"
# The eight fields of shared/data/sdss_frames and the group each belongs to. The six high-latitude
# fields are the reference; 002583-2-0136 holds the globular cluster M2 and 005405-6-0099 lies near
# the Galactic plane: both are crowded with stars and reported on their own.
FIELD_GROUPS = {
  "001035-6-0017": "high_latitude", "001043-5-0025": "high_latitude", "001992-1-0087": "high_latitude",
  "003184-2-0169": "high_latitude", "007264-3-0111": "high_latitude", "008162-6-0080": "high_latitude",
  "002583-2-0136": "m2_field", "005405-6-0099": "galactic_plane",
}
GROUPS = ("high_latitude", "m2_field", "m2_core", "galactic_plane")
# M2 (NGC 7089): centre near r-band pixel (212, 923) of 002583-2-0136 (shared/data README). Half-light
# radius 1.06' (Harris 1996, 2010 edition) = 161 px; sources within 2 half-light radii (320 px) form the
# "m2_core" group, the rest of that frame "m2_field" (still inside M2's 21' tidal radius).
M2_FIELD, M2_CENTRE_PX, M2_CORE_RADIUS_PX = "002583-2-0136", (212.0, 923.0), 320.0


@dataclasses.dataclass(frozen=True)
class FieldConditions:
  """What was measured on one real field's frames, per band u..z (input to matched simulations)."""
  name: str
  run: int
  camcol: int
  sky_dn: tuple  # median sky level, counts per pixel
  nmgy_per_dn: tuple  # median calibration, nanomaggies per count
  gain: tuple
  dark_variance: tuple
  psf_fwhm_px: tuple  # Gaussian-equivalent FWHM of the stellar locus in the cutouts (estimate_psf)
  offsets_px: tuple  # measured alignment shift of each band's WCS, band pixels (dx, dy)
  sky_residual_nmgy: tuple  # rms of the residual sky (SEP 64-px background of the sky-subtracted frame)
  area_deg2: float  # the area in which sources were kept (frame less the 32 px edge)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class CutoutSet:
  """Cutouts and where they come from: images (N, 5, 64, 64) float32 nanomaggies, per-object field
  name and group, detection S/N and position; `conditions` per field (real sets only)."""
  images: np.ndarray
  field: np.ndarray
  group: np.ndarray
  snr: np.ndarray
  x: np.ndarray
  y: np.ndarray
  conditions: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.images)

  def select(self, keep: np.ndarray) -> "CutoutSet":
    keep = np.asarray(keep)
    return CutoutSet(np.asarray(self.images)[keep], self.field[keep], self.group[keep], self.snr[keep],
                     self.x[keep], self.y[keep], self.conditions)


def concatenate(sets: Sequence[CutoutSet]) -> CutoutSet:
  conditions = {}
  for s in sets:
    conditions.update(s.conditions)
  return CutoutSet(np.concatenate([np.asarray(s.images) for s in sets]),
                   *(np.concatenate([getattr(s, k) for s in sets]) for k in ("field", "group", "snr", "x", "y")),
                   conditions=conditions)


def object_group(field_name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Group of each source of a field (`FIELD_GROUPS`; the M2 field split into core and rest)."""
  if field_name not in FIELD_GROUPS:
    raise KeyError(f"unknown field {field_name!r}; known: {', '.join(FIELD_GROUPS)}")
  group = np.full(len(x), FIELD_GROUPS[field_name], dtype="<U16")
  if field_name == M2_FIELD:
    core = np.hypot(np.asarray(x) - M2_CENTRE_PX[0], np.asarray(y) - M2_CENTRE_PX[1]) < M2_CORE_RADIUS_PX
    group[core] = "m2_core"
  return group


def _sky_residual_rms(frame) -> float:
  """rms over the frame of the residual background that SEP finds in a sky-subtracted frame (nmgy)."""
  import sep
  image = np.ascontiguousarray(frame.image, dtype=np.float64)
  back = sep.Background(image, bw=64, bh=64, fw=3, fh=3)
  return float(np.std(back.back()))


def measure_field_conditions(field, images: np.ndarray, edge: float) -> FieldConditions:
  """Observing conditions of a loaded `sdss_frames.Field`, PSF widths from its cutouts."""
  fwhm = []
  for b in range(len(BANDS)):
    fwhm.append(morphology.estimate_psf(images, band=b).fwhm_px)
  frames = [field.frames[b] for b in BANDS]
  height, width = field.reference.shape
  area = (width - 2 * edge) * (height - 2 * edge) * (0.396 / 3600.0) ** 2
  ref = field.reference
  return FieldConditions(
    name=field.name, run=ref.run, camcol=ref.camcol,
    sky_dn=tuple(float(np.median(f.sky)) for f in frames),
    nmgy_per_dn=tuple(float(np.median(f.calib)) for f in frames),
    gain=tuple(float(f.gain) for f in frames), dark_variance=tuple(float(f.dark_variance) for f in frames),
    psf_fwhm_px=tuple(float(v) for v in fwhm),
    offsets_px=tuple(tuple(float(v) for v in field.offsets[b]) for b in BANDS),
    sky_residual_nmgy=tuple(_sky_residual_rms(f) for f in frames), area_deg2=float(area))


def real_cache_dir(cache: Path | None = None, snr: float = REAL_SNR) -> Path:
  root = paths.cache_dir() if cache is None else Path(cache)
  return root / "real_sdss" / f"v{REAL_CACHE_VERSION}-snr{snr:g}"


def _cut_field(field_dir: Path, out: Path, snr: float) -> None:
  """Detects and cuts one field into `out` (images.npy, sources.npz, conditions.json), atomically."""
  from stargal_jax import sdss_frames
  field = sdss_frames.load_field(field_dir)
  sources = sdss_frames.detect_sources(field, snr=snr)
  positions = np.stack([sources["x"], sources["y"]], axis=1)
  images, _, meta = sdss_frames.cut_cutouts(field, positions)
  complete = meta["n_nan"] == 0  # as the frames tool writes them: cutouts wholly inside every band
  images, sources = images[complete], sources[complete]
  conditions = measure_field_conditions(field, images, edge=sdss_frames.CUTOUT_SIZE / 2)
  tmp = out.with_name(out.name + ".tmp")
  tmp.mkdir(parents=True, exist_ok=True)
  np.save(tmp / "images.npy", images.astype(np.float32), allow_pickle=False)
  np.savez(tmp / "sources.npz", x=sources["x"], y=sources["y"], snr=sources["snr"], flux=sources["flux"])
  (tmp / "conditions.json").write_text(json.dumps(conditions.to_dict(), indent=1))
  tmp.rename(out)


def real_reference(fields: Sequence[str] | None = None, snr: float = REAL_SNR, cache: Path | None = None,
                   frames_dir: Path | None = None, mmap: bool = True, verbose: bool = True) -> CutoutSet:
  """The real cutouts of `fields` (default all eight), cut once and cached under the data cache."""
  import sys
  fields = list(FIELD_GROUPS) if fields is None else list(fields)
  frames_dir = paths.shared_data_dir() / "sdss_frames" if frames_dir is None else Path(frames_dir)
  root = real_cache_dir(cache, snr)
  parts = []
  for name in fields:
    out = root / name
    if not (out / "conditions.json").is_file():
      if not (frames_dir / name).is_dir():
        raise FileNotFoundError(f"real SDSS field {name} not found under {frames_dir}")
      if verbose:
        print(f"real reference: detecting and cutting {name} (S/N >= {snr:g}) into {out}", file=sys.stderr)
      _cut_field(frames_dir / name, out, snr)
    images = np.load(out / "images.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
    with np.load(out / "sources.npz", allow_pickle=False) as s:
      x, y, source_snr = s["x"], s["y"], s["snr"]
    conditions = FieldConditions(**{k: (tuple(tuple(v) if isinstance(v, list) else v for v in val)
                                        if isinstance(val, list) else val)
                                    for k, val in json.loads((out / "conditions.json").read_text()).items()})
    parts.append(CutoutSet(images, np.full(len(x), name, dtype="<U16"), object_group(name, x, y), source_snr, x, y,
                           {name: conditions}))
  return concatenate(parts) if len(parts) > 1 else parts[0]


# ----------------------------------------------------------------------------------------------
# 2. Label-free object measurements and their two-sample comparison

MAG_BIN_EDGES = (-np.inf, 18.0, 19.0, 20.0, 21.0, 22.0, np.inf)
QUANTITIES = ("concentration", "psf_minus_extended", "size_px", "g_r", "r_i",
              "noise_u", "noise_g", "noise_r", "noise_i", "noise_z", "companions")
COLOUR_APERTURE_PX = 5.0  # colours from 2" (5 px) radius aperture fluxes
BACKGROUND_RADIUS_PX = 24.0  # background noise from pixels at r >= 24 px (morphology's background ring)
COMPANION_THRESH, COMPANION_MINAREA, COMPANION_MIN_DISTANCE_PX = 3.0, 5, 6.0
MAD_TO_SIGMA = 1.4826


def bin_labels(edges: Sequence[float] = MAG_BIN_EDGES) -> list[str]:
  labels = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    labels.append(f"<{hi:g}" if not np.isfinite(lo) else (f">={lo:g}" if not np.isfinite(hi) else f"{lo:g}-{hi:g}"))
  return labels


def magnitude_bin(r_mag: np.ndarray, edges: Sequence[float] = MAG_BIN_EDGES) -> np.ndarray:
  """Index of each magnitude's bin (edges as MAG_BIN_EDGES; lower edge inclusive)."""
  return np.clip(np.searchsorted(np.asarray(edges[1:-1]), r_mag, side="right"), 0, len(edges) - 2)


def background_noise(images: np.ndarray, radius_px: float = BACKGROUND_RADIUS_PX) -> np.ndarray:
  """(N, bands) 1.4826 x MAD of the pixels at radius >= radius_px (NaN pixels ignored)."""
  images = np.asarray(images)
  h, w = images.shape[-2:]
  yy, xx = np.indices((h, w))
  outer = np.hypot(yy - h // 2, xx - w // 2) >= radius_px
  values = images[..., outer].astype(np.float64)
  median = np.nanmedian(values, axis=-1, keepdims=True)
  return MAD_TO_SIGMA * np.nanmedian(np.abs(values - median), axis=-1)


def companion_counts(images: np.ndarray, band: int = 2) -> np.ndarray:
  """(N,) SEP detections in a band of each cutout (3 sigma of its background noise, >= 5 pixels),
  other than the central object (centroid farther than 6 px from the centre)."""
  import sep
  images = np.asarray(images)
  noise = background_noise(images[:, band:band + 1])[:, 0]
  counts = np.zeros(len(images), np.int64)
  c = images.shape[-1] // 2
  for k in range(len(images)):
    data = np.ascontiguousarray(np.nan_to_num(images[k, band], nan=0.0), dtype=np.float64)
    data = data - np.median(data)
    if not np.isfinite(noise[k]) or noise[k] <= 0:
      continue
    objects = sep.extract(data, COMPANION_THRESH, err=float(noise[k]), minarea=COMPANION_MINAREA)
    counts[k] = int(np.sum(np.hypot(objects["x"] - c, objects["y"] - c) > COMPANION_MIN_DISTANCE_PX))
  return counts


def aperture_colour(images: np.ndarray, band_a: int, band_b: int, radius_px: float = COLOUR_APERTURE_PX) -> np.ndarray:
  """m_a - m_b in a circular aperture (fluxes <= 0 clipped to magnitude 30, as morphology does)."""
  fa = morphology.aperture_flux(images, radius_px, band_a)
  fb = morphology.aperture_flux(images, radius_px, band_b)
  return morphology.flux_to_magnitude(fa) - morphology.flux_to_magnitude(fb)


def measure_objects(cutouts: CutoutSet) -> dict[str, np.ndarray]:
  """Label-free measurements of every cutout: r_mag and `QUANTITIES`.

  psf_minus_extended uses the PSF width and aperture correction estimated (label-free) from the
  cutouts of the same field, since seeing is a property of a field.
  """
  images = cutouts.images
  out = {"r_mag": morphology.r_magnitude(images), "concentration": morphology.concentration_index(images),
         "size_px": morphology.adaptive_size(images), "g_r": aperture_colour(images, 1, 2),
         "r_i": aperture_colour(images, 2, 3)}
  pme = np.full(len(cutouts), np.nan)
  for name in np.unique(cutouts.field):
    rows = np.flatnonzero(cutouts.field == name)
    sub = np.asarray(images[rows[0]:rows[-1] + 1]) if np.all(np.diff(rows) == 1) else np.asarray(images)[rows]
    pme[rows] = morphology.psf_minus_extended(sub)
  out["psf_minus_extended"] = pme
  noise = background_noise(images)
  for b, band in enumerate(BANDS):
    out[f"noise_{band}"] = noise[:, b]
  out["companions"] = companion_counts(images).astype(np.float64)
  return out
