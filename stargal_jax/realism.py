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
REAL_CACHE_VERSION = "2"
# The eight fields of shared/data/sdss_frames and the group each belongs to. The six high-latitude
# fields are the reference; 002583-2-0136 holds the globular cluster M2 and 005405-6-0099 lies near
# the Galactic plane: both are crowded with stars and reported on their own.
FIELD_GROUPS = {
  "001035-6-0017": "high_latitude", "001043-5-0025": "high_latitude", "001992-1-0087": "high_latitude",
  "003184-2-0169": "high_latitude", "007264-3-0111": "high_latitude", "008162-6-0080": "high_latitude",
  "002583-2-0136": "m2_field", "005405-6-0099": "galactic_plane",
}
GROUPS = ("high_latitude", "m2_field", "m2_region", "galactic_plane")
# M2 (NGC 7089): centre near r-band pixel (212, 923) of 002583-2-0136 (shared/data README). Half-light
# radius 1.06' (Harris 1996, 2010 edition) = 161 px. Within ~2 half-light radii nothing is detected
# cleanly (saturated, merged); the detections crowd a ring out to ~800 px (5 half-light radii), the
# "m2_region" group; the rest of that frame is "m2_field" (still inside M2's 21' tidal radius).
M2_FIELD, M2_CENTRE_PX, M2_REGION_RADIUS_PX = "002583-2-0136", (212.0, 923.0), 800.0
MAD_TO_SIGMA = 1.4826


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
  aperture_correction_mag: tuple  # its PSF-minus-7.4"-aperture magnitude (the light in the PSF's wings)
  noise_ratio: tuple  # 1.4826 MAD of source-free native pixels / the data model's sky + dark sigma
  offsets_px: tuple  # measured alignment shift of each band's WCS, band pixels (dx, dy)
  sky_residual_nmgy: tuple  # rms of the residual sky (SEP 64-px background of the sky-subtracted frame)
  area_deg2: float  # the area in which sources were kept (frame less the 32 px edge)
  galactic_b_deg: float  # Galactic latitude of the frame centre

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
  """Group of each source of a field (`FIELD_GROUPS`; the M2 field split into the cluster region and the rest)."""
  if field_name not in FIELD_GROUPS:
    raise KeyError(f"unknown field {field_name!r}; known: {', '.join(FIELD_GROUPS)}")
  group = np.full(len(x), FIELD_GROUPS[field_name], dtype="<U16")
  if field_name == M2_FIELD:
    near = np.hypot(np.asarray(x) - M2_CENTRE_PX[0], np.asarray(y) - M2_CENTRE_PX[1]) < M2_REGION_RADIUS_PX
    group[near] = "m2_region"
  return group


def _sky_residual_rms(frame) -> float:
  """rms over the frame of the residual background that SEP finds in a sky-subtracted frame (nmgy)."""
  import sep
  image = np.ascontiguousarray(frame.image, dtype=np.float64)
  back = sep.Background(image, bw=64, bh=64, fw=3, fh=3)
  return float(np.std(back.back()))


def native_noise_ratio(frame) -> float:
  """Measured / data-model pixel noise of a frame: 1.4826 MAD of (image - SEP 64-px background) / sigma
  over pixels away from sources (SEP 3-sigma detections dilated by 4 px), sigma = the sky + dark noise
  of the data model (`sdss_frames.noise_map` of an empty image)."""
  import sep
  from scipy import ndimage
  from stargal_jax import sdss_frames
  image = np.ascontiguousarray(frame.image, dtype=np.float64)
  sub = image - sep.Background(image, bw=64, bh=64, fw=3, fh=3).back()
  sigma = sdss_frames.noise_map(np.zeros_like(frame.image), frame.calib, frame.sky, frame.gain,
                                frame.dark_variance).astype(np.float64)
  pixstack, sub_objects = sep.get_extract_pixstack(), sep.get_sub_object_limit()
  sep.set_extract_pixstack(max(pixstack, 5_000_000))
  sep.set_sub_object_limit(max(sub_objects, 4096))
  try:
    # No deblending (one threshold, contrast 1): only the union of the sources' pixels is wanted.
    _, segmentation = sep.extract(sub, 3.0, err=sigma, segmentation_map=True, minarea=5, deblend_nthresh=1,
                                  deblend_cont=1.0)
  finally:
    sep.set_extract_pixstack(pixstack)
    sep.set_sub_object_limit(sub_objects)
  free = ~ndimage.binary_dilation(segmentation > 0, iterations=4)
  z = (sub / sigma)[free]
  return float(MAD_TO_SIGMA * np.median(np.abs(z - np.median(z))))


def galactic_latitude(field) -> float:
  from astropy.coordinates import SkyCoord
  height, width = field.reference.shape
  ra, dec = field.reference.wcs.pixel_to_world_values((width - 1) / 2, (height - 1) / 2)
  return float(SkyCoord(float(ra), float(dec), unit="deg").galactic.b.deg)


def measure_field_conditions(field, images: np.ndarray, edge: float) -> FieldConditions:
  """Observing conditions of a loaded `sdss_frames.Field`, PSF widths from its cutouts."""
  estimates = [morphology.estimate_psf(images, band=b) for b in range(len(BANDS))]
  frames = [field.frames[b] for b in BANDS]
  height, width = field.reference.shape
  area = (width - 2 * edge) * (height - 2 * edge) * (0.396 / 3600.0) ** 2
  ref = field.reference
  return FieldConditions(
    name=field.name, run=ref.run, camcol=ref.camcol,
    sky_dn=tuple(float(np.median(f.sky)) for f in frames),
    nmgy_per_dn=tuple(float(np.median(f.calib)) for f in frames),
    gain=tuple(float(f.gain) for f in frames), dark_variance=tuple(float(f.dark_variance) for f in frames),
    psf_fwhm_px=tuple(float(e.fwhm_px) for e in estimates),
    aperture_correction_mag=tuple(float(e.aperture_correction_mag) for e in estimates),
    noise_ratio=tuple(native_noise_ratio(f) for f in frames),
    offsets_px=tuple(tuple(float(v) for v in field.offsets[b]) for b in BANDS),
    sky_residual_nmgy=tuple(_sky_residual_rms(f) for f in frames), area_deg2=float(area),
    galactic_b_deg=galactic_latitude(field))


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


def finite(values: np.ndarray) -> np.ndarray:
  values = np.asarray(values, dtype=np.float64)
  return values[np.isfinite(values)]


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Two-sample Kolmogorov-Smirnov distance sup |F_a - F_b| of the finite values (NaN if one is empty)."""
  a, b = np.sort(finite(a)), np.sort(finite(b))
  if len(a) == 0 or len(b) == 0:
    return float("nan")
  points = np.concatenate([a, b])
  fa = np.searchsorted(a, points, side="right") / len(a)
  fb = np.searchsorted(b, points, side="right") / len(b)
  return float(np.max(np.abs(fa - fb)))


def ks_critical(n: int, m: int, alpha: float = 0.01) -> float:
  """Asymptotic critical KS distance at level alpha: sqrt(-ln(alpha / 2) / 2) sqrt((n + m) / (n m))."""
  if n == 0 or m == 0:
    return float("nan")
  return float(math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m)))


# The match criterion, fixed before any comparison was made: a per-bin distribution matches when its KS
# distance is at most KS_TOLERANCE (the CDFs nowhere more than 10 percentage points apart), or when it is
# not significant at KS_ALPHA (small bins, where 0.10 is within the noise).
KS_TOLERANCE = 0.10
KS_ALPHA = 0.01
MIN_PER_BIN = 20  # fewer objects than this in either set: the bin is reported, not judged


def ks_pass(d: float, n: int, m: int, tolerance: float = KS_TOLERANCE, alpha: float = KS_ALPHA) -> bool | None:
  """True / False by the match criterion; None when a set has fewer than MIN_PER_BIN values."""
  if min(n, m) < MIN_PER_BIN or not np.isfinite(d):
    return None
  return bool(d <= max(tolerance, ks_critical(n, m, alpha)))


def compare_by_bin(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                   quantities: Sequence[str] = QUANTITIES, edges: Sequence[float] = MAG_BIN_EDGES,
                   tolerance: float = KS_TOLERANCE, alpha: float = KS_ALPHA) -> list[dict]:
  """Per quantity and r-magnitude bin: sizes, medians, KS distance, critical value, pass.

  a and b are `measure_objects` outputs (each bins by its own r_mag). The first rows (bin 'all') compare
  the r-magnitude distributions themselves: the shape of the number counts.
  """
  labels = bin_labels(edges)
  bins_a, bins_b = magnitude_bin(a["r_mag"], edges), magnitude_bin(b["r_mag"], edges)
  rows = []
  d = ks_distance(a["r_mag"], b["r_mag"])
  n, m = len(finite(a["r_mag"])), len(finite(b["r_mag"]))
  rows.append({"quantity": "r_mag", "bin": "all", "n_a": n, "n_b": m, "median_a": float(np.median(finite(a["r_mag"]))),
               "median_b": float(np.median(finite(b["r_mag"]))), "ks": d, "ks_crit": ks_critical(n, m, alpha),
               "tolerance": tolerance, "pass": ks_pass(d, n, m, tolerance, alpha)})
  for q in quantities:
    for k, label in enumerate(labels):
      va, vb = finite(np.asarray(a[q])[bins_a == k]), finite(np.asarray(b[q])[bins_b == k])
      d = ks_distance(va, vb)
      rows.append({"quantity": q, "bin": label, "n_a": len(va), "n_b": len(vb),
                   "median_a": float(np.median(va)) if len(va) else float("nan"),
                   "median_b": float(np.median(vb)) if len(vb) else float("nan"),
                   "ks": d, "ks_crit": ks_critical(len(va), len(vb), alpha), "tolerance": tolerance,
                   "pass": ks_pass(d, len(va), len(vb), tolerance, alpha)})
  return rows


def counts_fractions(r_mag: np.ndarray, edges: Sequence[float] = MAG_BIN_EDGES) -> np.ndarray:
  """Fraction of the objects in each magnitude bin (the shape of the number counts)."""
  bins = magnitude_bin(finite(r_mag), edges)
  return np.bincount(bins, minlength=len(edges) - 1) / max(len(bins), 1)


def subset(measurements: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
  return {k: np.asarray(v)[keep] for k, v in measurements.items()}


def field_bootstrap(real: Mapping[str, np.ndarray], real_fields: np.ndarray, sim: Mapping[str, np.ndarray],
                    quantities: Sequence[str] = QUANTITIES, edges: Sequence[float] = MAG_BIN_EDGES,
                    n_boot: int = 200, seed: int = 0) -> dict[tuple[str, str], dict[str, float]]:
  """Field-to-field scatter of the KS distances, per (quantity, bin):
  'boot_lo', 'boot_hi': the 16th and 84th percentiles of KS(real*, sim) when the real fields are drawn
  with replacement (as many as there are); 'field_median', 'field_max': the KS distance between one
  real field and the other real fields, median and maximum over fields (what two skies differ by)."""
  rng = np.random.default_rng(seed)
  names = np.unique(real_fields)
  labels = bin_labels(edges)
  keys = [("r_mag", "all")] + [(q, label) for q in quantities for label in labels]
  def distances(a, b):
    rows = compare_by_bin(a, b, quantities, edges)
    return {(r["quantity"], r["bin"]): r["ks"] for r in rows}
  boots = {key: [] for key in keys}
  for _ in range(n_boot):
    drawn = rng.choice(names, size=len(names), replace=True)
    keep = np.concatenate([np.flatnonzero(real_fields == f) for f in drawn])
    for key, value in distances(subset(real, keep), sim).items():
      boots[key].append(value)
  per_field = {key: [] for key in keys}
  for f in names:
    inside = real_fields == f
    for key, value in distances(subset(real, inside), subset(real, ~inside)).items():
      per_field[key].append(value)
  out = {}
  for key in keys:
    b = finite(np.array(boots[key]))
    pf = finite(np.array(per_field[key]))
    out[key] = {"boot_lo": float(np.percentile(b, 16)) if len(b) else float("nan"),
                "boot_hi": float(np.percentile(b, 84)) if len(b) else float("nan"),
                "field_median": float(np.median(pf)) if len(pf) else float("nan"),
                "field_max": float(np.max(pf)) if len(pf) else float("nan")}
  return out


# ----------------------------------------------------------------------------------------------
# 3. The classifier two-sample test

C2ST_RADIUS_PX = 10.0  # the 'centre' / 'background' views split the cutout at 10 px (4")
C2ST_MATCH_WIDTH = 0.25  # magnitude matching in 0.25 mag bins


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """AUC of scores for labels (1 positive) by the Mann-Whitney rank sum (ties get mean ranks)."""
  from scipy import stats
  labels = np.asarray(labels).astype(bool)
  n1, n0 = int(labels.sum()), int((~labels).sum())
  if n1 == 0 or n0 == 0:
    return float("nan")
  ranks = stats.rankdata(scores)
  return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auc_standard_error(auc: float, n1: int, n0: int) -> float:
  """Hanley & McNeil (1982) standard error of an AUC."""
  q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
  var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc ** 2) + (n0 - 1) * (q2 - auc ** 2)) / max(n1 * n0, 1)
  return float(math.sqrt(max(var, 0.0)))


def match_magnitudes(mag_a: np.ndarray, mag_b: np.ndarray, rng: np.random.Generator,
                     width: float = C2ST_MATCH_WIDTH) -> tuple[np.ndarray, np.ndarray]:
  """(indices into a, indices into b) with the same number from each 'width' magnitude bin: all of a's
  objects in a bin and as many of b's drawn without replacement (fewer of a where b has too few)."""
  lo = np.floor(min(np.nanmin(mag_a), np.nanmin(mag_b)) / width) * width
  bin_a = np.floor((np.nan_to_num(mag_a, nan=99.0) - lo) / width).astype(int)
  bin_b = np.floor((np.nan_to_num(mag_b, nan=99.0) - lo) / width).astype(int)
  keep_a, keep_b = [], []
  for k in np.unique(bin_a):
    ia, ib = np.flatnonzero(bin_a == k), np.flatnonzero(bin_b == k)
    n = min(len(ia), len(ib))
    if n == 0:
      continue
    keep_a.append(rng.choice(ia, n, replace=False))
    keep_b.append(rng.choice(ib, n, replace=False))
  if not keep_a:
    return np.zeros(0, int), np.zeros(0, int)
  return np.concatenate(keep_a), np.concatenate(keep_b)


def _radius(size: int = 64) -> np.ndarray:
  yy, xx = np.indices((size, size))
  return np.hypot(yy - size // 2, xx - size // 2)


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
  from scipy import ndimage
  return ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="nearest")


def _shuffle_background(x: np.ndarray, seed: int = 0) -> np.ndarray:
  """Centre zeroed and the background pixels of each band permuted: only their histogram is left."""
  rng = np.random.default_rng(seed)
  out = np.where(_radius(x.shape[-1]) < C2ST_RADIUS_PX, 0.0, x)
  outer = np.flatnonzero((_radius(x.shape[-1]) >= C2ST_RADIUS_PX).ravel())
  flat = out.reshape(out.shape[0], out.shape[1], -1)
  for n in range(flat.shape[0]):
    for c in range(flat.shape[1]):
      flat[n, c, outer] = flat[n, c, rng.permutation(outer)]
  return flat.reshape(out.shape)


# Views of the (asinh-scaled) images that the classifier sees: which part gives a set away.
C2ST_VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
  "all": lambda x: x,
  **{f"band_{b}": (lambda x, i=i: x[:, i:i + 1]) for i, b in enumerate(BANDS)},
  "highpass": lambda x: x - _gaussian(x, 1.0),  # pixel-scale texture: noise and its correlations
  "lowpass": lambda x: _gaussian(x, 2.0),  # smooth light: profiles, colours, wings
  "background": lambda x: np.where(_radius(x.shape[-1]) < C2ST_RADIUS_PX, 0.0, x),
  "background_shuffled": _shuffle_background,  # background pixel histogram only, no spatial structure
  "centre": lambda x: np.where(_radius(x.shape[-1]) < C2ST_RADIUS_PX, x, 0.0),
}


def c2st_view(name: str) -> Callable[[np.ndarray], np.ndarray]:
  if name not in C2ST_VIEWS:
    raise KeyError(f"unknown C2ST view {name!r}; valid: {', '.join(C2ST_VIEWS)}")
  return C2ST_VIEWS[name]


def asinh_scale(images: np.ndarray, softening: np.ndarray) -> np.ndarray:
  """asinh(image / softening) per band (NaN -> 0): the noise near 1, bright cores compressed."""
  x = np.nan_to_num(np.asarray(images, dtype=np.float32), nan=0.0)
  return np.arcsinh(x / np.asarray(softening, np.float32)[None, :, None, None])


@dataclasses.dataclass(frozen=True)
class C2STConfig:
  """The classifier and its training: small on purpose (a few thousand images, a 2-core CPU)."""
  channels: tuple = (32, 64, 64)  # stride-2 3x3 convolutions: 64 -> 32 -> 16 -> 8
  hidden: int = 32
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  batch_size: int = 64
  epochs: int = 25
  validation_fraction: float = 0.2  # of the training half: picks the epoch (the test half is untouched)
  patience: int = 6


def _build_classifier(in_channels: int, image_size: int, config: C2STConfig, seed: int):
  from flax import nnx
  import jax

  class Classifier(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
      chans = (in_channels,) + tuple(config.channels)
      self.convs = nnx.List([nnx.Conv(chans[i], chans[i + 1], (3, 3), strides=2, rngs=rngs)
                             for i in range(len(config.channels))])
      side = -(-image_size // 2 ** len(config.channels))  # SAME padding: ceil at each stride
      self.hidden = nnx.Linear(side * side * chans[-1], config.hidden, rngs=rngs)
      self.out = nnx.Linear(config.hidden, 1, rngs=rngs)

    def __call__(self, x):
      x = jax.numpy.transpose(x, (0, 2, 3, 1))  # NCHW -> NHWC
      for conv in self.convs:
        x = jax.nn.gelu(conv(x))
      x = jax.nn.gelu(self.hidden(x.reshape(x.shape[0], -1)))
      return self.out(x)[:, 0]

  return Classifier(nnx.Rngs(seed))


def _dihedral(x: np.ndarray, k: int) -> np.ndarray:
  """One of the 8 rotations / reflections of (N, C, H, W) images (physics does not care)."""
  x = np.rot90(x, k % 4, axes=(2, 3))
  return x[:, :, :, ::-1] if k >= 4 else x


def train_classifier(x: np.ndarray, y: np.ndarray, config: C2STConfig = C2STConfig(), seed: int = 0):
  """Trains the C2ST classifier on (x, y) with early stopping on a held-out part; returns predict(x)."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  rng = np.random.default_rng(seed)
  order = rng.permutation(len(x))
  n_val = max(int(round(config.validation_fraction * len(x))), 1)
  val, fit = order[:n_val], order[n_val:]
  model = _build_classifier(x.shape[1], x.shape[-1], config, seed)
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  opt_state = tx.init(params)

  def logits(p, xb):
    return nnx.merge(graphdef, p)(xb)

  @jax.jit
  def step(p, s, xb, yb):
    def loss_fn(q):
      return optax.sigmoid_binary_cross_entropy(logits(q, xb), yb).mean()
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  predict_jit = jax.jit(logits)

  def predict(p, xs):
    out = [np.asarray(predict_jit(p, jnp.asarray(xs[i:i + 256]))) for i in range(0, len(xs), 256)]
    return np.concatenate(out) if out else np.zeros(0)

  best_auc, best_params, since_best = -1.0, params, 0
  steps_per_epoch = max(len(fit) // config.batch_size, 1)
  for epoch in range(config.epochs):
    perm = rng.permutation(fit)
    for i in range(steps_per_epoch):
      idx = perm[i * config.batch_size:(i + 1) * config.batch_size]
      xb = _dihedral(x[idx], int(rng.integers(8)))
      params, opt_state, _ = step(params, opt_state, jnp.asarray(np.ascontiguousarray(xb)), jnp.asarray(y[idx]))
    auc = roc_auc(y[val], predict(params, x[val]))
    if auc > best_auc:
      best_auc, best_params, since_best = auc, params, 0
    else:
      since_best += 1
      if since_best >= config.patience:
        break
  return lambda xs: predict(best_params, xs), best_auc


def c2st(images_a: np.ndarray, images_b: np.ndarray, mag_a: np.ndarray, mag_b: np.ndarray,
         view: str = "all", softening: np.ndarray | None = None, config: C2STConfig = C2STConfig(),
         seed: int = 0, edges: Sequence[float] = MAG_BIN_EDGES) -> dict:
  """Classifier two-sample test of set A (e.g. real) against set B (e.g. simulated).

  B is matched to A's r-magnitude histogram (`match_magnitudes`), both are asinh-scaled with A's
  background noise per band as softening (the same for both), passed through `view`, and split in
  halves; the classifier learns A (label 1) from B on one half and is scored on the other. Returns the
  held-out AUC (0.5: the sets cannot be told apart), its standard error, AUCs per magnitude bin, sizes.
  """
  rng = np.random.default_rng(seed)
  ia, ib = match_magnitudes(np.asarray(mag_a), np.asarray(mag_b), rng)
  if len(ia) < 20:
    raise ValueError(f"only {len(ia)} magnitude-matched pairs: the sets do not overlap in r magnitude")
  if softening is None:
    softening = np.nanmedian(background_noise(np.asarray(images_a)[np.sort(ia)]), axis=0)
  transform = c2st_view(view)
  x = np.concatenate([transform(asinh_scale(np.asarray(images_a)[ia], softening)),
                      transform(asinh_scale(np.asarray(images_b)[ib], softening))]).astype(np.float32)
  y = np.concatenate([np.ones(len(ia)), np.zeros(len(ib))]).astype(np.float32)
  mags = np.concatenate([np.asarray(mag_a)[ia], np.asarray(mag_b)[ib]])
  # Halves: pair k of the matching goes wholly to one half, so both halves keep matched magnitudes.
  pair_half = rng.permutation(len(ia)) % 2
  half = np.concatenate([pair_half, pair_half])
  predict, val_auc = train_classifier(x[half == 0], y[half == 0], config, seed)
  test = half == 1
  scores = predict(x[test])
  auc = roc_auc(y[test], scores)
  n1, n0 = int(y[test].sum()), int((1 - y[test]).sum())
  bins = magnitude_bin(mags[test], edges)
  per_bin = {}
  for k, label in enumerate(bin_labels(edges)):
    inside = bins == k
    per_bin[label] = {"auc": roc_auc(y[test][inside], scores[inside]), "n": int(inside.sum())}
  return {"view": view, "auc": auc, "auc_se": auc_standard_error(auc, n1, n0), "validation_auc": val_auc,
          "n_train": int((half == 0).sum()), "n_test": int(test.sum()), "per_bin": per_bin}
