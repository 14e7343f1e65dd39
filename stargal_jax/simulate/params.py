"""SDSS camera, calibration and sky constants, and the simulator's configurable parameters.

Every number carries its source. Per-band tuples are in the order u, g, r, i, z. Constants that
describe the SDSS instrument are module constants; choices about the simulated population and
observing conditions live in `SimParams` (a frozen dataclass, recorded in each data set's manifest).
"""

import dataclasses
import json

import numpy as np

SIM_VERSION = "2.1"

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

# Nanomaggies per DN for one 53.9 s frame (frame HDU1, the ubercalibrated zero points of Padmanabhan et
# al. 2008, ApJ 674, 1217, at survey airmasses): medians over the six high-latitude fields of
# shared/data (u 0.0067-0.0148, g 0.0032-0.0041, r 0.0047-0.0052, i 0.0066-0.0071, z 0.023-0.036).
NMGY_PER_DN = (0.0102, 0.0038, 0.0050, 0.0067, 0.0324)

# Dark-sky brightness in mag/arcsec^2: medians of the sky models (HDU2 x calibration) of the six
# high-latitude fields (scatter 0.12-0.25 mag); within 0.2 mag of the SDSS imaging documentation's
# u 22.1, g 21.8, r 21.0, i 20.2, z 18.9 (Stoughton et al. 2002, AJ 123, 485).
SKY_MAG_ARCSEC2 = (22.3, 21.96, 20.92, 20.04, 18.8)

# Saturation: raw counts (sky included) at which a pixel saturates and its charge bleeds along the
# column. Measured on the frames of shared/data: saturated stars plateau at 50,000-60,000 counts in
# every band (sdss_frames.SATURATION_COUNTS, 40,000, is where detection drops a source as (near)
# saturated). SDSS's quoted point-source saturation limits (r ~ 14.1 in 1.4" seeing; DR7 imaging
# documentation) follow from it. Below the 16-bit ADC ceiling less the software bias of 1000 DN.
SATURATION_DN = 55000.0
ADC_MAX_DN = 65535 - 1000

# PSF width of each band relative to r: the median over the six high-latitude fields of shared/data of
# the band/r stellar-locus widths in their cutouts (`realism.FieldConditions.psf_fwhm_px`); close to
# Kolmogorov's lambda^(-1/5) (Fried 1966; Roddier 1981: u 1.12, g 1.06, i 0.96, z 0.93).
SEEING_RATIO_TO_R = (1.13, 1.04, 1.0, 0.96, 0.92)

# PSF wings. SDSS PSFs have extended power-law wings beyond the atmospheric core (Stoughton et al.
# 2002, sect. 4.4: PHOTO models the PSF as a double Gaussian plus a power law). Measured here on the
# stacked r-band profiles of 184 bright (r 14.5-18.5) stellar-locus stars in the six high-latitude
# fields of shared/data: a Kolmogorov core convolved with (1 - f) delta + f Moffat(beta, FWHM), with
# the Moffat fixed in arcsec (optics and scattering, not seeing), fits the profile to 0-5 px at
# 12% rms in log (per-field core FWHM free) with f = 0.15, beta = 1.8, FWHM 1.2"; a Kolmogorov
# alone falls short by a factor 1.2-2 at 2-8" (3-2 in the best-seeing field). The g and i fits
# agree within their degeneracies (i: f 0.22, beta 1.55, FWHM 0.75").
PSF_WING_FRACTION = 0.15
PSF_WING_BETA = 1.8
PSF_WING_FWHM_ARCSEC = 1.2

# Detection, as `stargal_jax.sdss_frames.detect_sources` does it on real frames: SEP on the r band,
# 1.5 sigma of the sky noise after a 3x3 matched filter, >= 5 pixels, deblending 32 levels and
# contrast 0.005, windowed centroid, S/N = flux / error in a 5 px (2") radius aperture with the
# per-pixel noise map; sources with >= 40000 raw counts in their box are dropped (saturated).
# The real reference of `stargal_jax.realism` keeps S/N >= 5.
DETECT_SNR = 5.0
DETECT_MATCH_RADIUS_PX = 2.0  # the detection nearest the central object's true position, within this

# Galaxy and star number counts, dN/dm per deg^2 per mag in r (intrinsic, before detection).
# Normalisation at r = 20 measured on the six high-latitude fields of shared/data (0.205 deg^2 in
# which sources were kept; r 19.5-20.5, where detection is complete: 507 sources, i.e. 2470 per
# deg^2 per mag). 147 of them are point-like by psf_minus_extended < 0.145; on simulated cutouts that
# cut finds 0.82 of the true point sources at r ~ 20, so ~45% are stars: 1100 stars, 1370 galaxies.
# Galaxy slopes d log N / dm: 0.45 at r < 20 (Yasuda et al. 2001, AJ 122, 1104), 0.33 fainter
# (Metcalfe et al. 2001, MNRAS 323, 795, R 20-26). Stars at high latitude: 0.10, measured on the
# six fields' point sources r 15.5-21 (the halo's flat counts, Juric et al. 2008, ApJ 673, 864).
GALAXY_DENSITY_R20 = 1370.0
GALAXY_SLOPE_BRIGHT, GALAXY_SLOPE_FAINT, GALAXY_SLOPE_BREAK = 0.45, 0.33, 20.0
STAR_DENSITY_R20 = 1100.0
STAR_SLOPE = 0.10


@dataclasses.dataclass(frozen=True)
class SimParams:
  """Population and observing-condition choices of the simulator (defaults follow SDSS high latitude).

  The physical knobs for shifted simulations: seeing_r_median_arcsec (seeing), depth_mag (exposure
  10^(0.8 depth_mag) x SDSS's: +1 is one magnitude deeper at the sky-limited S/N 5 limit),
  galaxy_size_scale (sizes relative to the size relation), point_fraction (stars + QSOs among the
  detected central objects), neighbour_density_scale (0: no neighbours, 3: crowded).
  """
  # Point-like (stars + QSOs) fraction of the detected central objects. 0.43 is what the six
  # high-latitude fields of shared/data give to S/N 5, by forward modelling: simulations in their
  # conditions reproduce the fields' point-like share (psf_minus_extended < 0.145) per r bin below 21
  # and their counts per bin (chi^2 26 for 11 bins) for 0.43 (0.33 gives too few stars at r < 20).
  # The study's prior was 0.3.
  point_fraction: float = 0.43
  # QSOs among point sources at high latitude to r ~ 22.5: ~100 per deg^2 (Richards et al. 2006, AJ
  # 131, 2766) against ~4000 stars (the star counts below).
  qso_fraction_of_point: float = 0.03
  # Central objects: r magnitudes drawn from each kind's counts (GALAXY_* / STAR_* above, QSOs with
  # slope qso_count_slope) between these limits, then kept only if detected (S/N >= detect_snr, not
  # saturated), as on real frames. Below 14 nearly everything saturates; above 23.5 nothing reaches
  # S/N 5 even in the best seeing.
  r_bright_limit: float = 13.5
  r_faint_limit: float = 23.5
  qso_count_slope: float = 0.3  # Richards et al. 2006, faint end
  detect_snr: float = DETECT_SNR
  # Field sources around the central object (neighbours), Poisson with the star and galaxy counts
  # above, times this scale (0: none; 1: high-latitude field; larger: crowded), brighter than
  # neighbour_faint_mag (r = 23 is S/N ~2 in median seeing: fainter ones are never detected and go to
  # the faint background), within the stamp or up to neighbour_margin_px outside it; none closer than
  # min_neighbour_distance_px to the centre (~the PSF FWHM: closer pairs are one detection).
  neighbour_density_scale: float = 1.0
  # Stellar density of the field relative to the six high-latitude fields' mean (Galactic latitude): scales
  # the star counts of the neighbours (the central objects' star share is point_fraction).
  star_density_scale: float = 1.0
  neighbour_bright_mag: float = 14.0
  neighbour_faint_mag: float = 23.0
  neighbour_margin_px: float = 16.0
  min_neighbour_distance_px: float = 3.0
  # Faint background below neighbour_faint_mag to this magnitude: galaxies too faint to detect, of
  # half-light radius faint_background_hlr_arcsec (~0.3" at r ~ 25: HST deep-field sizes, Ferguson et
  # al. 2004, ApJ 600, L107), continuing the galaxy counts; they add texture and a little noise.
  faint_background_limit_mag: float = 27.0
  faint_background_hlr_arcsec: float = 0.3
  # Galaxy sizes: half-light radii from Shen et al. (2003) at the galaxy's luminosity (the size-
  # luminosity relation of luminous disks shows no significant evolution to z ~ 1 once selection is
  # accounted for, Simard et al. 1999, ApJ 519, 563; the fading of a fixed-mass galaxy with time,
  # luminosity_evolution_q mag per unit redshift, is 0 here: 1.0, Loveday et al. 2012, would apply it,
  # and makes the six fields' galaxies at r > 21 ~15% too compact), then evolved at fixed luminosity:
  # early types as (1 + z)^-1.48 (van der Wel et al. 2014, ApJ 788, 28), disks not at all (Barden et al.
  # 2005, ApJ 635, 959: no evolution of the disk size-mass relation since z ~ 1); times
  # galaxy_size_scale.
  galaxy_size_scale: float = 1.0
  luminosity_evolution_q: float = 0.0
  size_evolution_late: float = 0.0
  size_evolution_early: float = 1.48
  # Cutouts touching a frame edge (NaN strips or corner blocks), as in the study's cutouts.
  defect_fraction: float = 0.02
  # Observing conditions come per field (one seeing, sky and calibration shared by
  # objects_per_field consecutive objects, as in a 2048 x 1489 SDSS frame, which holds 330-800
  # sources above S/N 5 at high latitude), with small per-object variations.
  objects_per_field: int = 400
  # Seeing: r-band Kolmogorov core FWHM of the PSF (wings above added), log-normal over fields.
  # SDSS median r-band seeing is ~1.3" (Abazajian et al. 2009, ApJS 182, 543; 10-90% ~1.0-1.7"); the
  # six high-latitude fields of shared/data have cores of 0.95-1.37" (median 1.29").
  seeing_r_median_arcsec: float = 1.3
  seeing_log_sigma: float = 0.18
  seeing_limits_arcsec: tuple = (0.7, 2.6)
  # Per-band seeing jitter about the lambda law (log-sigma, per field), PSF variation within a field
  # (log-sigma per object; SDSS PSFs vary by a few per cent across a frame) and PSF ellipticity: a
  # shear shared by all bands (tracking, wind shake) plus a per-band part; SDSS PSF |e| < ~0.05.
  seeing_band_jitter: float = 0.05
  seeing_object_jitter: float = 0.02
  psf_shear_sigma: float = 0.02
  psf_shear_band_sigma: float = 0.005
  # Sky brightness: mean offset (mag, positive = darker sky, i.e. deeper), scatter over fields shared
  # by the bands (moon, airglow) and per band.
  sky_mag_offset: float = 0.0
  sky_mag_sigma: float = 0.15
  sky_mag_band_sigma: float = 0.1
  # Depth: the exposure is 10^(0.8 depth_mag) times the SDSS drift-scan exposure (more DN per
  # nanomaggy, more sky DN): the sky-limited noise in nanomaggies falls by 10^(-0.4 depth_mag), i.e.
  # the S/N limit goes depth_mag magnitudes deeper; bright stars saturate depth_mag fainter.
  depth_mag: float = 0.0
  # Pixel noise relative to the data model's sky + dark noise, per band: measured on the native
  # frames of the six high-latitude fields (1.4826 MAD of source-free pixels / model sigma; medians
  # u 0.99, g 1.04, r 1.04, i 1.01, z 1.02; the fields scatter by ~0.04), times the ratio of the real to
  # the simulated cutouts' background noise in those fields' conditions (medians u 0.98, g 0.985, r
  # 0.98, i 0.99, z 0.995: faint sources, which the simulator adds itself, raise the native MAD).
  noise_scale: tuple = (0.97, 1.02, 1.02, 1.0, 1.01)
  noise_scale_sigma: float = 0.04
  # Share of light in the PSF's Moffat wings (PSF_WING_*), log-normal over fields: the six fields'
  # stellar aperture corrections (0.126-0.180 mag) need shares of 0.10-0.26 (`observed.psf_for_field`;
  # median 0.165, log-sigma 0.35).
  psf_wing_fraction: float = 0.165
  psf_wing_log_sigma: float = 0.35
  # Photometric calibration scatter over fields (transparency, airmass, CCD), log-normal sigma of
  # NMGY_PER_DN per band: the six high-latitude fields' log standard deviations (u 0.27, g 0.07, r
  # 0.04, i 0.02, z 0.13; in u the runs differ most).
  calibration_sigma: tuple = (0.27, 0.07, 0.04, 0.03, 0.13)
  # Residual sky after SDSS's sky subtraction: a constant per cutout and band, Gaussian with these
  # sigmas (nanomaggies), correlated across bands (`sky_residual_band_correlation`: the share of a
  # component common to the five bands). Set (v2.1) so that the cutouts' background level (median of
  # the pixels >= 24 px from the centre, in noise units) has the spread and cross-band correlation of
  # the six high-latitude fields' cutouts (16-84% half-width u g r i z 0.05 0.10 0.11 0.11 0.05,
  # g-r / r-i correlation 0.87 / 0.90, docs/simulator_validation.md): the simulator's other
  # backgrounds (faint sources, wings) give 0.03-0.06 and 0.82 by themselves, and these sigmas add the
  # rest in quadrature. v2.0 drew (0.0075, 0.0040, 0.0055, 0.0125, 0.019) independently per band, the
  # rms of SEP's 64-px background mesh of the frames, which holds the mesh's own noise: levels 2-3x
  # too wide and uncorrelated, the most visible difference of v2.0 from the sky (C2ST).
  sky_residual_nmgy: tuple = (0.0014, 0.0015, 0.0025, 0.0042, 0.0058)
  sky_residual_band_correlation: float = 0.9
  # Real cutouts are resampled onto the r grid: each band by a cubic spline at the object's
  # windowed centroid plus the band's sub-pixel offset (uniform), r at the centroid. False keeps
  # native pixels (no interpolation; diagnostics only).
  resample_bands: bool = True
  # PSF wings (PSF_WING_* above); False: the Kolmogorov core alone (diagnostics only).
  psf_wings: bool = True
  # Truth masks: a pixel belongs to the object whose noiseless g+r+i flux there is largest, if
  # that flux exceeds this many sigma of the g+r+i sky noise.
  mask_threshold_sigma: float = 1.0
  # Labelled files hold 1..this many records, uniformly (mean 7, as the study's 140k in 20k files).
  max_records_per_file: int = 13

  def __post_init__(self):
    problems = validation_problems(self)
    if problems:
      raise ValueError("invalid SimParams: " + "; ".join(problems))

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

  def replace(self, **changes) -> "SimParams":
    return dataclasses.replace(self, **changes)


def validation_problems(p: SimParams) -> list[str]:
  """What is physically meaningless in a parameter set (empty when fine)."""
  problems = []
  def need(condition, text):
    if not condition:
      problems.append(text)
  for name in ("point_fraction", "qso_fraction_of_point", "defect_fraction"):
    need(0.0 <= getattr(p, name) <= 1.0, f"{name}={getattr(p, name)!r} must be in [0, 1]")
  need(p.r_bright_limit < p.r_faint_limit, f"r_bright_limit={p.r_bright_limit} must be < r_faint_limit={p.r_faint_limit}")
  need(p.neighbour_bright_mag < p.neighbour_faint_mag <= p.faint_background_limit_mag,
       "need neighbour_bright_mag < neighbour_faint_mag <= faint_background_limit_mag")
  need(len(p.calibration_sigma) == 5 and all(v >= 0 for v in p.calibration_sigma),
       f"calibration_sigma={p.calibration_sigma!r} must be 5 values >= 0 (u, g, r, i, z)")
  for name in ("neighbour_density_scale", "star_density_scale", "neighbour_margin_px", "min_neighbour_distance_px", "seeing_log_sigma",
               "seeing_band_jitter", "seeing_object_jitter", "psf_shear_sigma", "psf_shear_band_sigma",
               "sky_mag_sigma", "sky_mag_band_sigma", "mask_threshold_sigma",
               "luminosity_evolution_q", "size_evolution_late", "size_evolution_early", "detect_snr"):
    need(getattr(p, name) >= 0, f"{name}={getattr(p, name)!r} must be >= 0")
  for name in ("seeing_r_median_arcsec", "galaxy_size_scale", "faint_background_hlr_arcsec"):
    need(getattr(p, name) > 0, f"{name}={getattr(p, name)!r} must be > 0")
  lo, hi = (tuple(p.seeing_limits_arcsec) + (None, None))[:2]
  need(len(p.seeing_limits_arcsec) == 2 and 0 < lo < hi, f"seeing_limits_arcsec={p.seeing_limits_arcsec!r} must be (lo, hi), 0 < lo < hi")
  need(len(p.noise_scale) == 5 and all(v > 0 for v in p.noise_scale),
       f"noise_scale={p.noise_scale!r} must be 5 values > 0 (u, g, r, i, z)")
  need(0.0 <= p.psf_wing_fraction < 1.0, f"psf_wing_fraction={p.psf_wing_fraction!r} must be in [0, 1)")
  need(p.noise_scale_sigma >= 0 and p.psf_wing_log_sigma >= 0, "noise_scale_sigma and psf_wing_log_sigma must be >= 0")
  need(len(p.sky_residual_nmgy) == 5 and all(v >= 0 for v in p.sky_residual_nmgy),
       f"sky_residual_nmgy={p.sky_residual_nmgy!r} must be 5 values >= 0 (u, g, r, i, z)")
  need(0.0 <= p.sky_residual_band_correlation <= 1.0,
       f"sky_residual_band_correlation={p.sky_residual_band_correlation!r} must be in [0, 1]")
  need(-3.0 <= p.depth_mag <= 3.0, f"depth_mag={p.depth_mag!r} must be in [-3, 3]")
  need(p.objects_per_field >= 1, f"objects_per_field={p.objects_per_field!r} must be >= 1")
  need(p.max_records_per_file >= 1, f"max_records_per_file={p.max_records_per_file!r} must be >= 1")
  need(p.neighbour_margin_px <= 24, f"neighbour_margin_px={p.neighbour_margin_px!r} must be <= 24 (render grid)")
  return problems
