"""Draws what is in a cutout: observing conditions, the central object, its neighbours, the faint sky.

Observing conditions come per field (seeing, sky, calibration, camera column) with small per-object
variations. The central object is a detected source of a high-latitude field: its kind is drawn with
the point-source fraction, its r magnitude from that kind's number counts (`counts_density`), and the
renderer keeps it only if it is detected as on real frames. Neighbours are field sources from the same
counts, Poisson over the stamp and a margin; the faint background continues the galaxy counts below
them. Stars follow the SDSS stellar locus, QSOs the SDSS colour-redshift relation, and galaxies are
bulge + disk systems whose redshift follows their apparent magnitude and whose size follows a
published size-luminosity relation with size and luminosity evolution, seen through a Planck18
cosmology, so that faint, distant galaxies become nearly unresolved as in the real data. All
randomness comes from the numpy `Generator` passed in; nothing here draws pixels (see `render`).
"""

import dataclasses
import functools

import numpy as np
from scipy import optimize, special

from stargal_jax.simulate import params as P

KINDS = ("STAR", "GALAXY", "QSO")

# --- number counts -----------------------------------------------------------------------
# dN/dm per deg^2 per mag in r (params.GALAXY_* and STAR_*: measured normalisation, published
# slopes). QSOs follow qso_count_slope; their share of the point sources is qso_fraction_of_point.
COUNT_GRID_STEP = 0.005  # mag: inverse-CDF table step of `sample_counts_magnitude`


def galaxy_density(r: np.ndarray) -> np.ndarray:
  """Galaxy counts dN/dm (deg^-2 mag^-1): a broken power law through GALAXY_DENSITY_R20."""
  r = np.asarray(r, dtype=np.float64)
  slope = np.where(r < P.GALAXY_SLOPE_BREAK, P.GALAXY_SLOPE_BRIGHT, P.GALAXY_SLOPE_FAINT)
  at_break = P.GALAXY_DENSITY_R20 * 10.0 ** (P.GALAXY_SLOPE_BRIGHT * (P.GALAXY_SLOPE_BREAK - 20.0))
  return at_break * 10.0 ** (slope * (r - P.GALAXY_SLOPE_BREAK))


def star_density(r: np.ndarray) -> np.ndarray:
  """High-latitude star counts dN/dm (deg^-2 mag^-1)."""
  return P.STAR_DENSITY_R20 * 10.0 ** (P.STAR_SLOPE * (np.asarray(r, dtype=np.float64) - 20.0))


def counts_density(kind: str, r: np.ndarray, qso_slope: float = 0.3) -> np.ndarray:
  """dN/dm of one kind; 'FIELD' is galaxies + stars (what neighbours are drawn from)."""
  if kind == "GALAXY":
    return galaxy_density(r)
  if kind == "STAR":
    return star_density(r)
  if kind == "QSO":
    return 10.0 ** (qso_slope * (np.asarray(r, dtype=np.float64) - 20.0))
  if kind == "FIELD":
    return galaxy_density(r) + star_density(r)
  raise KeyError(f"unknown counts kind {kind!r}; valid: GALAXY, STAR, QSO, FIELD")


@functools.lru_cache(maxsize=64)
def counts_table(kind: str, lo: float, hi: float, qso_slope: float) -> tuple[np.ndarray, np.ndarray, float]:
  """(magnitude grid, normalised CDF, integral in deg^-2) of a kind's counts on [lo, hi]."""
  grid = np.linspace(lo, hi, max(int(round((hi - lo) / COUNT_GRID_STEP)), 2) + 1)
  density = counts_density(kind, grid, qso_slope)
  cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
  return grid, cumulative / cumulative[-1], float(cumulative[-1])


def sample_counts_magnitude(rng: np.random.Generator, kind: str, lo: float, hi: float,
                            qso_slope: float = 0.3, size: int | None = None):
  """r magnitude(s) with dN/dm following `counts_density` on [lo, hi] (inverse CDF, linear in between)."""
  grid, cdf, _ = counts_table(kind, float(lo), float(hi), float(qso_slope))
  u = rng.random(size)
  out = np.interp(u, cdf, grid)
  return float(out) if size is None else out


def counts_per_deg2(kind: str, lo: float, hi: float, qso_slope: float = 0.3) -> float:
  """Integral of a kind's counts between two magnitudes, per deg^2."""
  return counts_table(kind, float(lo), float(hi), float(qso_slope))[2]


# --- stars: SDSS stellar locus --------------------------------------------------------------
# Median u-g, g-r, r-i, i-z by spectral type, rounded from Covey et al. 2007 (AJ 134, 2398);
# g-r against r-i agrees with the Juric et al. 2008 (ApJ 673, 864) locus within 0.05 mag for
# r-i < 0.7 (tested). Types A0 F0 F5 G0 G5 K0 K5 M0 M2 M4.
STELLAR_LOCUS = np.array([
  [1.05, -0.15, -0.10, -0.05],
  [0.95, 0.15, 0.03, 0.00],
  [0.95, 0.30, 0.10, 0.02],
  [1.10, 0.42, 0.15, 0.05],
  [1.25, 0.50, 0.18, 0.07],
  [1.55, 0.62, 0.22, 0.10],
  [2.25, 1.00, 0.37, 0.18],
  [2.45, 1.30, 0.62, 0.34],
  [2.50, 1.42, 0.90, 0.47],
  [2.60, 1.50, 1.40, 0.70],
])
# High-latitude stars (Juric et al. 2008): disk dwarfs, G-K at bright magnitudes, M dwarfs whose share
# grows towards faint magnitudes, and halo / thick-disk turn-off stars (F-G, g-r ~0.3-0.4) that take over
# the blue stars by r ~ 19.5. Types A0-K5 are drawn with DISK_TYPE_WEIGHTS at r <= 17 and HALO_TYPE_WEIGHTS
# at r >= 19.5 (linear in between), M0-M4 with M_DWARF_WEIGHTS. The share of point sources redder than
# g-r = 1.1 measured on the six high-latitude fields of shared/data (|psf_minus_extended| < 0.1, 2"
# aperture colours; 531 stars r 14-21): 0.16 (r 14-17), 0.30 (17-18), 0.39 (18-19), 0.56 (19-20), 0.65
# (20-20.5), 0.73 (20.5-21); extrapolated to 0.8 at r 22.5. Their bluer stars have median g-r 0.54 at
# r < 18 (disk G-K) and 0.40 at r 18-20 (turn-off), which the two weight sets reproduce.
DISK_TYPE_WEIGHTS = np.array([0.01, 0.04, 0.10, 0.18, 0.22, 0.24, 0.21, 0.0, 0.0, 0.0])
HALO_TYPE_WEIGHTS = np.array([0.04, 0.10, 0.30, 0.28, 0.15, 0.08, 0.05, 0.0, 0.0, 0.0])
DISK_TO_HALO_R = (17.0, 19.5)
M_DWARF_WEIGHTS = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.40, 0.35, 0.25])
M_DWARF_SHARE_R = np.array([16.5, 17.5, 18.5, 19.5, 20.25, 20.75, 22.5])
M_DWARF_SHARE = np.array([0.16, 0.30, 0.39, 0.56, 0.65, 0.73, 0.80])
# Locus width: u-g spreads with metallicity (~0.1, Ivezic et al. 2008); the other colours ~0.03.
STELLAR_COLOUR_SCATTER = np.array([0.10, 0.03, 0.03, 0.03])
# Stellar radial velocities, km/s (disk + halo dispersion), giving the catalogue 'z' = v/c.
STAR_VELOCITY_SIGMA_KMS = 120.0
SPEED_OF_LIGHT_KMS = 299792.458

# --- QSOs -----------------------------------------------------------------------------------
# Median colours against redshift, approximated from Richards et al. 2001 (AJ 121, 2308) fig. 3:
# UV excess (u-g ~ 0.2) up to z ~ 2.2, then the Lyman-alpha forest reddens u-g.
QSO_Z = np.array([0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1, 2.4, 2.7, 3.0])
QSO_COLOURS = np.array([
  [0.15, 0.20, 0.20, 0.15, 0.20, 0.25, 0.20, 0.40, 0.90, 1.50],  # u-g
  [0.20, 0.10, 0.25, 0.15, 0.10, 0.15, 0.20, 0.20, 0.25, 0.35],  # g-r
  [0.30, 0.20, 0.05, 0.20, 0.25, 0.15, 0.05, 0.15, 0.15, 0.15],  # r-i
  [0.05, 0.20, 0.15, 0.00, 0.05, 0.15, 0.20, 0.10, 0.05, 0.05],  # i-z
]).T
QSO_COLOUR_SCATTER = 0.12
# SDSS DR7 QSO redshifts peak near 1.5 (Schneider et al. 2010, AJ 139, 2360); kept within 0.3-3.
QSO_Z_MEAN, QSO_Z_SIGMA, QSO_Z_RANGE = 1.5, 0.7, (0.3, 3.0)

# --- galaxies -------------------------------------------------------------------------------
# Median redshift against r: SDSS main sample z = 0.10 at its r = 17.77 limit (Strauss et al.
# 2002); LRGs z ~ 0.2-0.35 at r ~ 19-20 (Eisenstein et al. 2001); z ~ 0.5 at r ~ 21 and ~ 0.65 at
# r ~ 22.5 (CFRS, Lilly et al. 1995; DEEP2); ~0.8 at r ~ 24 (VVDS median 0.76 for I_AB <= 24, Le
# Fevre et al. 2005, A&A 439, 845). Interpolated in log z, log-normal scatter 0.35.
ZMED_R = np.array([14.0, 15.5, 17.77, 19.0, 20.0, 21.0, 22.5, 24.0, 27.0])
ZMED_Z = np.array([0.03, 0.05, 0.10, 0.20, 0.32, 0.48, 0.65, 0.80, 1.10])
Z_LOG_SIGMA = 0.35
GALAXY_Z_RANGE = (0.005, 1.2)
# Observed-frame colour tracks (u-g, g-r, r-i, i-z) of red (E/S0, LRG) and blue (Sbc) galaxies,
# approximate: z = 0 from Fukugita et al. 1995 (PASP 107, 945); the red track's g-r and r-i follow
# the LRG track of Eisenstein et al. 2001 (AJ 122, 2267). The tracks stand in for k-corrections.
# At z ~ 0.1 they straddle the u-r = 2.22 separator of Strateva et al. 2001 (AJ 122, 1861).
TRACK_Z = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.2])
RED_TRACK = np.array([
  [1.75, 1.85, 2.05, 2.25, 2.40, 2.50, 2.50, 2.50, 2.50],
  [0.75, 0.92, 1.20, 1.48, 1.70, 1.80, 1.85, 1.90, 1.90],
  [0.40, 0.42, 0.45, 0.50, 0.62, 0.78, 0.95, 1.20, 1.30],
  [0.30, 0.33, 0.38, 0.40, 0.40, 0.45, 0.55, 0.75, 0.95],
]).T
BLUE_TRACK = np.array([
  [1.15, 1.20, 1.30, 1.35, 1.35, 1.30, 1.25, 1.20, 1.10],
  [0.45, 0.55, 0.70, 0.85, 1.00, 1.10, 1.15, 1.20, 1.20],
  [0.25, 0.28, 0.30, 0.35, 0.40, 0.50, 0.60, 0.75, 0.90],
  [0.15, 0.20, 0.22, 0.25, 0.28, 0.30, 0.35, 0.45, 0.60],
]).T
# Irregular / star-forming galaxies (Im): bluer than the Sbc-Scd blue track (z = 0: g-r 0.27 against
# ~0.45-0.57, Fukugita et al. 1995), and more so when redshifted, since their spectra are flat (observed
# offsets from the blue track in u-g, g-r, r-i, i-z, against z, approximate, from flat-spectrum
# templates redshifted through the SDSS bands). Their share of the blue galaxies grows towards faint
# magnitudes: a few per cent in bright samples, ~30% of the galaxies at I ~ 22 in HST morphological
# counts (Glazebrook et al. 1995, MNRAS 275, L19; Driver et al. 1995, ApJ 449, L23). They are pure disks.
IRREGULAR_OFFSET_Z = np.array([0.0, 0.3, 0.5, 1.2])
IRREGULAR_OFFSET = np.array([
  [-0.30, -0.15, -0.10, -0.05],
  [-0.30, -0.35, -0.15, -0.08],
  [-0.30, -0.50, -0.20, -0.10],
  [-0.30, -0.50, -0.30, -0.15],
])
IRREGULAR_SHARE_R = np.array([17.5, 22.0])
IRREGULAR_SHARE = np.array([0.05, 0.35])
RED_COLOUR_SCATTER = np.array([0.10, 0.05, 0.04, 0.04])
BLUE_COLOUR_SCATTER = np.array([0.15, 0.10, 0.06, 0.06])
# Crude r-band k-corrections, K_r ~ slope * z (red ~2.0, blue ~0.8; Blanton & Roweis 2007).
K_SLOPE_RED, K_SLOPE_BLUE = 2.0, 0.8
# Red (early-type) share of galaxies against apparent r, measured on the six high-latitude fields of
# shared/data by forward modelling: the share of extended sources (psf_minus_extended > 0.3) redder
# in 2" g-r than midway between the red and blue tracks at the median redshift of their magnitude is
# 0.70 (r < 18, 69 objects), 0.63 (18-19), 0.58 (19-20), 0.43 (20-21), 0.33 (21-22) on the real
# cutouts; photometric noise and redshift scatter raise it by 0.01, 0.14, 0.03, 0.05, 0.12 on
# simulated cutouts of known share, which are subtracted. Extrapolated to 0.15 at r 23 (faint
# samples are dominated by blue galaxies, e.g. Faber et al. 2007, ApJ 665, 265).
RED_FRACTION_R = np.array([17.5, 18.5, 19.5, 20.5, 21.5, 23.0])
RED_FRACTION = np.array([0.70, 0.56, 0.52, 0.38, 0.21, 0.15])
# Size-luminosity relations, r band (Shen et al. 2003, MNRAS 343, 978, eqs. 14-18 and table 1):
# early types log R50/kpc = -0.4 a M + b; late types -0.4 alpha M + (beta - alpha)
# log(1 + 10^(-0.4 (M - M0))) + gamma; ln-scatter sigma2 + (sigma1 - sigma2) / (1 + 10^(-0.8 (M -
# M0))).
SHEN_EARLY = dict(a=0.65, b=-5.06, sigma1=0.45, sigma2=0.27, m0=-20.52)
SHEN_LATE = dict(alpha=0.21, beta=0.53, gamma=-1.31, sigma1=0.48, sigma2=0.25, m0=-20.52)
# Bulge-to-total (r band): mostly bulge for red, mostly disk for blue galaxies (Simard et al.
# 2011, ApJS 196, 11), Beta-distributed. Bulge/disk half-light ratio ~0.35 (bulge R_e / disk
# scale length ~0.2-0.6, MacArthur et al. 2003). Bulges are redder than their disks (colour
# offsets below, MacArthur et al. 2004), less so in red galaxies.
BT_BETA_RED, BT_BETA_BLUE = (4.0, 2.0), (1.2, 5.0)
BULGE_DISK_RATIO, BULGE_DISK_LOG_SIGMA = 0.35, 0.1
BULGE_COLOUR_OFFSET = np.array([0.15, 0.08, 0.03, 0.02])
# Thick-disk intrinsic axis ratio (Padilla & Strauss 2008) and bulge apparent axis ratios.
DISK_THICKNESS = 0.2
BULGE_Q_MEAN, BULGE_Q_SIGMA, BULGE_Q_RANGE = 0.75, 0.15, (0.35, 1.0)
MAX_HLR_ARCSEC = 20.0


@dataclasses.dataclass(frozen=True)
class Conditions:
  """One observation's per-band PSF, sky and calibration (the five bands come from one scan).

  psf_fwhm_arcsec is the FWHM of the Kolmogorov core (render adds the wings); sky_residual_nmgy the
  rms of the residual sky left by SDSS's sky subtraction; noise_scale the measured / data-model pixel
  noise; psf_wing_fraction the share of light in the PSF's Moffat wings.
  """
  camcol: int
  psf_fwhm_arcsec: np.ndarray
  psf_g1: np.ndarray
  psf_g2: np.ndarray
  sky_dn: np.ndarray
  nmgy_per_dn: np.ndarray
  gain: np.ndarray
  dark_variance: np.ndarray
  sky_residual_nmgy: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(5))
  noise_scale: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(5))
  psf_wing_fraction: float = P.PSF_WING_FRACTION

  def sky_sigma_nmgy(self) -> np.ndarray:
    """Per-band sky + read noise of one pixel, in nanomaggies."""
    return self.noise_scale * self.nmgy_per_dn * np.sqrt(self.sky_dn / self.gain + self.dark_variance)


@dataclasses.dataclass(frozen=True)
class Source:
  """One object: kind, position in pixels (x = column), total ugriz AB mags, shape."""
  kind: str
  x: float
  y: float
  mag: np.ndarray
  z: float
  bulge_fraction: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(5))
  bulge_hlr_arcsec: float = 0.0
  disk_hlr_arcsec: float = 0.0
  bulge_q: float = 1.0
  disk_q: float = 1.0
  beta_rad: float = 0.0
  r_half_arcsec: float = 0.0

  @property
  def is_point(self) -> bool:
    return self.kind != "GALAXY"

  def flux_nmgy(self) -> np.ndarray:
    return 10.0 ** (-0.4 * (self.mag - 22.5))

  def moved(self, dx: float, dy: float) -> "Source":
    return dataclasses.replace(self, x=self.x + dx, y=self.y + dy)


@dataclasses.dataclass(frozen=True)
class FaintBackground:
  """Sources too faint to detect, drawn in aggregate: positions (pixels) and ugriz fluxes (nmgy)."""
  x: np.ndarray
  y: np.ndarray
  flux: np.ndarray  # (n, 5)
  hlr_arcsec: float


def mags_from_colours(r: float, colours: np.ndarray) -> np.ndarray:
  """ugriz from r and (u-g, g-r, r-i, i-z)."""
  ug, gr, ri, iz = colours
  g = r + gr
  i = r - ri
  return np.array([g + ug, g, r, i, i - iz])


def truncated_power_law(rng: np.random.Generator, slope: float, lo: float, hi: float) -> float:
  """m with dN/dm ~ 10^(slope m) on [lo, hi], by inverting the CDF."""
  if slope == 0.0:
    return float(rng.uniform(lo, hi))
  span = 10.0 ** (slope * (hi - lo)) - 1.0
  return float(lo + np.log10(1.0 + rng.random() * span) / slope)


def exposure_scale(params: P.SimParams) -> float:
  """Exposure relative to SDSS's: 10^(0.8 depth_mag) makes sky-limited S/N limits depth_mag deeper."""
  return float(10.0 ** (0.8 * params.depth_mag))


def sample_field(rng: np.random.Generator, params: P.SimParams) -> Conditions:
  """One field's conditions: seeing (correlated across bands), PSF shear, sky, calibration, camcol."""
  camcol = int(rng.integers(1, 7))
  lo, hi = params.seeing_limits_arcsec
  seeing_r = np.clip(params.seeing_r_median_arcsec * np.exp(rng.normal(0, params.seeing_log_sigma)), lo, hi)
  fwhm = seeing_r * np.array(P.SEEING_RATIO_TO_R) * np.exp(rng.normal(0, params.seeing_band_jitter, 5))
  shared_g = rng.normal(0, params.psf_shear_sigma, 2)
  g1 = shared_g[0] + rng.normal(0, params.psf_shear_band_sigma, 5)
  g2 = shared_g[1] + rng.normal(0, params.psf_shear_band_sigma, 5)
  sky_mag = (np.array(P.SKY_MAG_ARCSEC2) + params.sky_mag_offset + rng.normal(0, params.sky_mag_sigma)
             + rng.normal(0, params.sky_mag_band_sigma, 5))
  nmgy = (np.array(P.NMGY_PER_DN) * np.exp(rng.normal(0, 1, 5) * np.asarray(params.calibration_sigma))
          / exposure_scale(params))
  sky_nmgy_per_pixel = 10.0 ** (-0.4 * (sky_mag - 22.5)) * P.PIXEL_SCALE_ARCSEC ** 2
  noise_scale = np.array(params.noise_scale) * np.exp(rng.normal(0, params.noise_scale_sigma, 5))
  wing_fraction = float(np.clip(params.psf_wing_fraction * np.exp(rng.normal(0, params.psf_wing_log_sigma)), 0, 0.9))
  return Conditions(camcol=camcol, psf_fwhm_arcsec=fwhm, psf_g1=g1, psf_g2=g2,
                    sky_dn=sky_nmgy_per_pixel / nmgy, nmgy_per_dn=nmgy,
                    gain=P.GAIN_E_PER_DN[camcol - 1].copy(), dark_variance=P.DARK_VARIANCE_DN2[camcol - 1].copy(),
                    sky_residual_nmgy=np.array(params.sky_residual_nmgy, dtype=np.float64),
                    noise_scale=noise_scale, psf_wing_fraction=round(wing_fraction, 4))


def object_conditions(rng: np.random.Generator, field: Conditions, params: P.SimParams) -> Conditions:
  """The field's conditions at one object: the PSF varies by a few per cent across a frame."""
  jitter = np.exp(rng.normal(0, params.seeing_object_jitter))
  return dataclasses.replace(field, psf_fwhm_arcsec=np.asarray(field.psf_fwhm_arcsec) * jitter)


def sample_conditions(rng: np.random.Generator, params: P.SimParams) -> Conditions:
  """A field's conditions and one object's variation of them (a cutout from a random field)."""
  return object_conditions(rng, sample_field(rng, params), params)


def sample_kind(rng: np.random.Generator, params: P.SimParams) -> str:
  if rng.random() >= params.point_fraction:
    return "GALAXY"
  return "QSO" if rng.random() < params.qso_fraction_of_point else "STAR"


def sample_r_magnitude(rng: np.random.Generator, kind: str, params: P.SimParams) -> float:
  """Central-object r from its kind's number counts between r_bright_limit and r_faint_limit."""
  return sample_counts_magnitude(rng, kind, params.r_bright_limit, params.r_faint_limit, params.qso_count_slope)


def m_dwarf_share(r: float) -> float:
  return float(np.interp(r, M_DWARF_SHARE_R, M_DWARF_SHARE))


def star_colours(rng: np.random.Generator, r: float = 20.0) -> np.ndarray:
  """A point on the stellar locus: a spectral type (weighted; M dwarfs with their share at this r),
  interpolated between neighbouring types, plus the locus width."""
  if rng.random() < m_dwarf_share(r):
    weights = M_DWARF_WEIGHTS
  else:
    halo = float(np.clip((r - DISK_TO_HALO_R[0]) / (DISK_TO_HALO_R[1] - DISK_TO_HALO_R[0]), 0.0, 1.0))
    weights = (1 - halo) * DISK_TYPE_WEIGHTS + halo * HALO_TYPE_WEIGHTS
  node = rng.choice(len(weights), p=weights / weights.sum())
  t = np.clip(node + rng.uniform(-0.5, 0.5), 0, len(STELLAR_LOCUS) - 1)
  lo = int(np.floor(t))
  hi = min(lo + 1, len(STELLAR_LOCUS) - 1)
  colours = STELLAR_LOCUS[lo] + (t - lo) * (STELLAR_LOCUS[hi] - STELLAR_LOCUS[lo])
  return colours + rng.normal(0, STELLAR_COLOUR_SCATTER)


def make_star(rng: np.random.Generator, r: float, x: float, y: float) -> Source:
  z = rng.normal(0, STAR_VELOCITY_SIGMA_KMS) / SPEED_OF_LIGHT_KMS
  return Source(kind="STAR", x=x, y=y, mag=mags_from_colours(r, star_colours(rng, r)), z=float(z))


def make_qso(rng: np.random.Generator, r: float, x: float, y: float) -> Source:
  while True:
    z = rng.normal(QSO_Z_MEAN, QSO_Z_SIGMA)
    if QSO_Z_RANGE[0] <= z <= QSO_Z_RANGE[1]:
      break
  colours = np.array([np.interp(z, QSO_Z, QSO_COLOURS[:, c]) for c in range(4)])
  colours = colours + rng.normal(0, QSO_COLOUR_SCATTER, 4)
  return Source(kind="QSO", x=x, y=y, mag=mags_from_colours(r, colours), z=float(z))


@functools.lru_cache(maxsize=1)
def cosmology_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(z, distance modulus, kpc per arcsec) on a grid, from astropy's Planck18 (offline)."""
  from astropy.cosmology import Planck18
  z = np.geomspace(1e-3, 3.0, 512)
  distmod = Planck18.distmod(z).value
  kpc_per_arcsec = Planck18.kpc_proper_per_arcmin(z).value / 60.0
  return z, distmod, kpc_per_arcsec


def distance_modulus(z: float) -> float:
  zs, dm, _ = cosmology_table()
  return float(np.interp(np.log(z), np.log(zs), dm))


def kpc_per_arcsec(z: float) -> float:
  zs, _, scale = cosmology_table()
  return float(np.interp(np.log(z), np.log(zs), scale))


def median_redshift(r: float) -> float:
  return float(np.exp(np.interp(r, ZMED_R, np.log(ZMED_Z))))


def shen_half_light_kpc(abs_mag_r: float, early: bool) -> tuple[float, float]:
  """Median R50 (kpc) and its ln-scatter at M_r, Shen et al. 2003."""
  if early:
    s = SHEN_EARLY
    log_r = -0.4 * s["a"] * abs_mag_r + s["b"]
  else:
    s = SHEN_LATE
    log_r = (-0.4 * s["alpha"] * abs_mag_r + (s["beta"] - s["alpha"]) *
             np.log10(1 + 10 ** (-0.4 * (abs_mag_r - s["m0"]))) + s["gamma"])
  sigma = s["sigma2"] + (s["sigma1"] - s["sigma2"]) / (1 + 10 ** (-0.8 * (abs_mag_r - s["m0"])))
  return float(10 ** log_r), float(sigma)


def enclosed_fraction(radius: float, hlr: float, n: float) -> float:
  """Fraction of a circular Sersic-n profile's light within radius (half at hlr)."""
  if hlr <= 0:
    return 1.0
  b = special.gammaincinv(2 * n, 0.5)
  return float(special.gammainc(2 * n, b * (radius / hlr) ** (1 / n)))


def composite_half_light(bulge_fraction: float, bulge_hlr: float, disk_hlr: float) -> float:
  """Half-light radius of a de Vaucouleurs bulge + exponential disk (circularised)."""
  def excess(radius):
    return (bulge_fraction * enclosed_fraction(radius, bulge_hlr, 4.0) +
            (1 - bulge_fraction) * enclosed_fraction(radius, disk_hlr, 1.0) - 0.5)
  lo, hi = 1e-6 * max(bulge_hlr, disk_hlr), 10 * max(bulge_hlr, disk_hlr)
  return float(optimize.brentq(excess, lo, hi, xtol=1e-8 * hi))


def make_galaxy(rng: np.random.Generator, r: float, x: float, y: float,
                params: P.SimParams = P.SimParams(), single_disk: bool = False) -> Source:
  """A bulge + disk galaxy of total magnitude r with physically tied redshift, colour and size.

  single_disk: a pure exponential disk (for faint neighbours, whose bulges cannot be seen; cheaper).
  """
  z = float(np.clip(median_redshift(r) * np.exp(rng.normal(0, Z_LOG_SIGMA)), *GALAXY_Z_RANGE))
  red = rng.random() < float(np.interp(r, RED_FRACTION_R, RED_FRACTION))
  irregular = (not red) and rng.random() < float(np.interp(r, IRREGULAR_SHARE_R, IRREGULAR_SHARE))
  track, scatter = (RED_TRACK, RED_COLOUR_SCATTER) if red else (BLUE_TRACK, BLUE_COLOUR_SCATTER)
  colours = np.array([np.interp(z, TRACK_Z, track[:, c]) for c in range(4)]) + rng.normal(0, scatter)
  if irregular:
    colours = colours + np.array([np.interp(z, IRREGULAR_OFFSET_Z, IRREGULAR_OFFSET[:, c]) for c in range(4)])
  bulge_colours = colours + BULGE_COLOUR_OFFSET * (0.3 if red else 1.0)
  bt_r = 0.0 if single_disk or irregular else float(rng.beta(*(BT_BETA_RED if red else BT_BETA_BLUE)))
  # Component fluxes per band: the r-band split by B/T, the other bands from each one's colours.
  flux_r = 10.0 ** (-0.4 * (r - 22.5))
  bulge_flux = bt_r * flux_r * 10.0 ** (-0.4 * (mags_from_colours(0.0, bulge_colours)))
  disk_flux = (1 - bt_r) * flux_r * 10.0 ** (-0.4 * (mags_from_colours(0.0, colours)))
  total = bulge_flux + disk_flux
  abs_mag = r - distance_modulus(z) - (K_SLOPE_RED if red else K_SLOPE_BLUE) * z
  # Size at the z = 0 luminosity of the same galaxy (evolution fades it by Q z), shrunk by the size
  # evolution at fixed mass.
  median_kpc, ln_sigma = shen_half_light_kpc(abs_mag + params.luminosity_evolution_q * z, early=red)
  evolution = (1.0 + z) ** -(params.size_evolution_early if red else params.size_evolution_late)
  r_half_kpc = median_kpc * evolution * params.galaxy_size_scale * np.exp(rng.normal(0, ln_sigma))
  r_half = min(r_half_kpc / kpc_per_arcsec(z), MAX_HLR_ARCSEC)
  ratio = BULGE_DISK_RATIO * 10 ** rng.normal(0, BULGE_DISK_LOG_SIGMA)
  scale = r_half / composite_half_light(bt_r, ratio, 1.0) if bt_r > 0 else r_half
  cos_i = rng.random()
  disk_q = float(np.sqrt(cos_i ** 2 + DISK_THICKNESS ** 2 * (1 - cos_i ** 2)))
  bulge_q = float(np.clip(rng.normal(BULGE_Q_MEAN, BULGE_Q_SIGMA), *BULGE_Q_RANGE))
  return Source(kind="GALAXY", x=x, y=y, mag=22.5 - 2.5 * np.log10(total), z=z,
                bulge_fraction=bulge_flux / total, bulge_hlr_arcsec=float(ratio * scale) if bt_r > 0 else 0.0,
                disk_hlr_arcsec=float(scale), bulge_q=bulge_q, disk_q=disk_q,
                beta_rad=float(rng.uniform(0, np.pi)), r_half_arcsec=float(r_half))


MAKERS = {"STAR": make_star, "QSO": make_qso, "GALAXY": make_galaxy}


def make_source(rng: np.random.Generator, kind: str, r: float, x: float, y: float, params: P.SimParams,
                single_disk: bool = False) -> Source:
  if kind == "GALAXY":
    return make_galaxy(rng, r, x, y, params, single_disk=single_disk)
  return MAKERS[kind](rng, r, x, y)


def sample_central(rng: np.random.Generator, params: P.SimParams, kind: str | None = None,
                   centre: float = float(P.CENTRE_PIXEL)) -> Source:
  """The target: kind by the point fraction (unless given), r from that kind's counts, at `centre`
  plus a uniform sub-pixel offset in [0, 1) (its position relative to the pixel grid)."""
  kind = sample_kind(rng, params) if kind is None else kind
  r = sample_r_magnitude(rng, kind, params)
  x, y = centre + rng.random(2)
  return make_source(rng, kind, r, float(x), float(y), params)


def neighbour_area_deg2(params: P.SimParams, stamp: int = P.STAMP_SIZE) -> float:
  side = (stamp + 2 * params.neighbour_margin_px) * P.PIXEL_SCALE_ARCSEC / 3600.0
  return side * side


def sample_neighbours(rng: np.random.Generator, params: P.SimParams, centre_xy: tuple[float, float],
                      stamp: int = P.STAMP_SIZE, simple_fainter_than: float = 22.0) -> list[Source]:
  """Field sources (stars and galaxies from the counts, Poisson) over the stamp centred on
  `centre_xy` and neighbour_margin_px around it, none closer than min_neighbour_distance_px to it.
  Galaxies fainter than `simple_fainter_than` are pure exponential disks."""
  lo, hi = params.neighbour_bright_mag, params.neighbour_faint_mag
  per_deg2 = counts_per_deg2("GALAXY", lo, hi) + params.star_density_scale * counts_per_deg2("STAR", lo, hi)
  mean = params.neighbour_density_scale * per_deg2 * neighbour_area_deg2(params, stamp)
  count = int(rng.poisson(mean)) if mean > 0 else 0
  half = stamp / 2 + params.neighbour_margin_px
  neighbours = []
  for _ in range(count):
    while True:
      dx, dy = rng.uniform(-half, half, 2)
      if np.hypot(dx, dy) > params.min_neighbour_distance_px:
        break
    r = sample_counts_magnitude(rng, "FIELD", lo, hi) if params.star_density_scale == 1.0 else \
        sample_counts_magnitude(rng, "STAR" if rng.random() < params.star_density_scale * counts_per_deg2("STAR", lo, hi)
                                / per_deg2 else "GALAXY", lo, hi)
    stars = params.star_density_scale * float(star_density(r))
    kind = "STAR" if rng.random() < stars / (stars + float(galaxy_density(r))) else "GALAXY"
    neighbours.append(make_source(rng, kind, r, float(centre_xy[0] + dx), float(centre_xy[1] + dy), params,
                                  single_disk=r > simple_fainter_than))
  return neighbours


# Colours of the faint background: blue galaxies at z ~ 1.1 (the median redshift at r ~ 25-27 above).
FAINT_BACKGROUND_Z = 1.1


def sample_faint_background(rng: np.random.Generator, params: P.SimParams, grid: int) -> FaintBackground:
  """Undetectable galaxies (neighbour_faint_mag .. faint_background_limit_mag) over a periodic grid."""
  lo, hi = params.neighbour_faint_mag, params.faint_background_limit_mag
  area = (grid * P.PIXEL_SCALE_ARCSEC / 3600.0) ** 2
  mean = counts_per_deg2("GALAXY", lo, hi) * area if hi > lo else 0.0
  n = int(rng.poisson(mean)) if mean > 0 else 0
  r = sample_counts_magnitude(rng, "GALAXY", lo, hi, size=n) if n else np.zeros(0)
  colours = np.array([np.interp(FAINT_BACKGROUND_Z, TRACK_Z, BLUE_TRACK[:, c]) for c in range(4)])
  ug, gr, ri, iz = (colours[None, :] + rng.normal(0, BLUE_COLOUR_SCATTER, (n, 4))).T
  g, i = r + gr, r - ri
  mags = np.stack([g + ug, g, r, i, i - iz], axis=1)  # mags_from_colours for many at once
  return FaintBackground(x=rng.uniform(0, grid, n), y=rng.uniform(0, grid, n),
                         flux=10.0 ** (-0.4 * (mags - 22.5)), hlr_arcsec=params.faint_background_hlr_arcsec)
