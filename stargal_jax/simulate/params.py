"""SDSS camera, calibration and sky constants, and the simulator's configurable parameters.

Every number carries its source. Per-band tuples are in the order u, g, r, i, z. Constants that
describe the SDSS instrument are module constants; choices about the simulated population and
observing conditions live in `SimParams` (a frozen dataclass, recorded in each data set's manifest).
"""

import dataclasses
import json

import numpy as np

SIM_VERSION = "1.0"

BANDS = ("u", "g", "r", "i", "z")
STAMP_SIZE = 64
CENTRE_PIXEL = 32  # 0-indexed pixel holding the object, as in cutout = frame[y-32:y+32, x-32:x+32]

# Gunn et al. 1998 (AJ 116, 3040): 0.396 arcsec per 24 um pixel.
PIXEL_SCALE_ARCSEC = 0.396
# Drift-scan exposure per band, frame header EXPTIME (Gunn et al. 1998; Stoughton et al. 2002).
EXPOSURE_S = 53.907456
# Effective wavelengths in Angstrom (Fukugita et al. 1996, AJ 111, 1748; SDSS filter docs).
EFFECTIVE_WAVELENGTH_A = (3551.0, 4686.0, 6166.0, 7480.0, 8932.0)

# SDSS DR8+ "frame" data model (data.sdss.org/datamodel/files/BOSS_PHOTOOBJ/frames/.../frame.html):
# gain in electrons per DN and dark variance in DN^2, rows camcol 1-6, columns u g r i z. The data
# model footnotes change a few entries for later runs (camcol 2 u gain 1.825 for run > 1100;
# dark variance camcol 2 i 6.25, camcol 4 i 7.5625, camcol 4 z 12.6025, camcol 5 z 2.1025 for
# run > 1500); the early-run values are used here.
GAIN_E_PER_DN = np.array([
  [1.62, 3.32, 4.71, 5.165, 4.745],
  [1.595, 3.855, 4.6, 6.565, 5.155],
  [1.59, 3.845, 4.72, 4.86, 4.885],
  [1.6, 3.995, 4.76, 4.885, 4.775],
  [1.47, 4.05, 4.725, 4.64, 3.48],
  [2.17, 4.035, 4.895, 4.76, 4.69],
])
DARK_VARIANCE_DN2 = np.array([
  [9.61, 15.6025, 1.8225, 7.84, 0.81],
  [12.6025, 1.44, 1.00, 5.76, 1.0],
  [8.7025, 1.3225, 1.3225, 4.6225, 1.0],
  [12.6025, 1.96, 1.3225, 6.25, 9.61],
  [9.3025, 1.1025, 0.81, 7.84, 1.8225],
  [7.0225, 1.8225, 0.9025, 5.0625, 1.21],
])

# Nanomaggies per DN for one 53.9 s frame: typical values of the frame header keyword NMGY (the
# ubercalibrated zero points of Padmanabhan et al. 2008, ApJ 674, 1217, at survey airmasses).
# The four DR17 frames in shared/data have u 0.0102-0.0155, g 0.0035-0.0045, r 0.0049-0.0055,
# i 0.0064-0.0068, z 0.033-0.039.
NMGY_PER_DN = (0.0125, 0.0040, 0.0052, 0.0066, 0.035)

# Dark-sky brightness in mag/arcsec^2 (SDSS imaging documentation; Stoughton et al. 2002, AJ 123,
# 485). The sky models (HDU2) of the four shared frames give medians u 22.07, g 21.82, r 20.92,
# i 20.24, z 18.99, within 0.1 mag of these.
SKY_MAG_ARCSEC2 = (22.1, 21.8, 21.0, 20.2, 18.9)

# Point-source saturation magnitudes of SDSS imaging (SDSS DR7 imaging documentation, "bright
# limits": u 12.0, g 14.1, r 14.1, i 13.8, z 12.3). The DN level at which a pixel saturates is
# derived from them for a centred star in median seeing (`render.saturation_levels_dn`).
SATURATION_MAG = (12.0, 14.1, 14.1, 13.8, 12.3)
# 16-bit ADC ceiling less the software bias of 1000 DN (frame header SOFTBIAS): no band saturates
# above this (it binds only in u, where the quoted 12.0 would need ~79k DN).
ADC_MAX_DN = 65535 - 1000

# Kolmogorov seeing scales as lambda^(-1/5) (Fried 1966; Roddier 1981), giving u 1.12, g 1.06,
# i 0.96, z 0.93 times r. SDSS z images are broader than that law (thick-CCD red halo, focus): the
# ratio 0.97 is used for z. Measured on the four shared frames (median over fields of band/r
# adaptive-moment widths): u 1.10, g 1.06, i 1.01, z 1.02.
SEEING_RATIO_TO_R = (1.12, 1.06, 1.0, 0.96, 0.97)


@dataclasses.dataclass(frozen=True)
class SimParams:
  """Population and observing-condition choices of the simulator (defaults follow SDSS)."""
  # The study's prior: about 30% of the labelled objects are point-like (stars + QSOs).
  point_fraction: float = 0.3
  # Fraction of point sources that are QSOs (SDSS DR7 spectroscopy: ~100k QSOs beside ~460k
  # stars, Abazajian et al. 2009; a labelled set of 'STAR'/'GALAXY'/'QSO' has QSOs as a minority).
  qso_fraction_of_point: float = 0.2
  # Stamps with 1-3 neighbours, their relative frequencies, and the exclusion radius around the
  # centre (a neighbour closer than ~6 px would have been deblended as part of the target).
  neighbour_fraction: float = 0.3
  neighbour_count_weights: tuple = (0.55, 0.3, 0.15)
  min_neighbour_distance_px: float = 6.0
  # Neighbours are random field objects: stars with this probability (high latitude, r < 23),
  # magnitudes from field counts dN/dm ~ 10^(slope m) between the limits (Yasuda et al. 2001).
  neighbour_star_fraction: float = 0.3
  neighbour_mag_limits: tuple = (15.0, 23.5)
  neighbour_count_slope: float = 0.35
  # Cutouts touching a frame edge (NaN strips or corner blocks).
  defect_fraction: float = 0.02
  # Brightness distribution: a spectroscopic-like sample plus this fraction of a fainter
  # photometric sample down to r_faint_limit (see populations.sample_r_magnitude).
  faint_fraction: float = 0.2
  r_bright_limit: float = 14.0
  r_faint_limit: float = 22.5
  # Seeing: r-band Kolmogorov FWHM, log-normal. SDSS quotes a median r-band PSF width of
  # 1.3-1.4" (Abazajian et al. 2009); that width is an effective (n_eff) width, which for a
  # Kolmogorov profile is ~1.15 x the FWHM, so the median FWHM is 1.2". A log-sigma of 0.2 gives
  # a 2.5-97.5% range of 0.81-1.78" FWHM (effective width 0.9-2.1").
  seeing_r_median_arcsec: float = 1.2
  seeing_log_sigma: float = 0.2
  seeing_limits_arcsec: tuple = (0.7, 2.6)
  # Per-band seeing jitter about the lambda law (log-sigma), and PSF ellipticity: a shear shared
  # by all bands (tracking, wind shake) plus a per-band part; SDSS PSF |e| is typically < 0.05.
  seeing_band_jitter: float = 0.05
  psf_shear_sigma: float = 0.02
  psf_shear_band_sigma: float = 0.005
  # Sky brightness scatter (mag): a shared part (moon, airglow) and a per-band part.
  sky_mag_sigma: float = 0.15
  sky_mag_band_sigma: float = 0.1
  # Photometric calibration scatter (transparency, airmass), log-normal sigma of NMGY_PER_DN.
  calibration_sigma: float = 0.05
  # Truth masks: a pixel belongs to the object whose noiseless g+r+i flux there is largest, if
  # that flux exceeds this many sigma of the g+r+i sky noise.
  mask_threshold_sigma: float = 1.0
  # Labelled files hold 1..this many records, uniformly (mean 7, as the study's 140k in 20k files).
  max_records_per_file: int = 13

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict) -> "SimParams":
    """Builds params from a dict (e.g. a manifest); unknown names fail loudly listing valid ones."""
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - valid
    if unknown:
      raise KeyError(f"unknown SimParams fields {sorted(unknown)}; valid: {sorted(valid)}")
    tupled = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**tupled)
