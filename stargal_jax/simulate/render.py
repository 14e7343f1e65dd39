"""Turns sources and conditions into SDSS-like cutouts: PSF, native pixels, noise, detection, resampling.

Rendering is done in Fourier space on a 128-pixel periodic grid, of which the native patch (80 x 80
pixels) is one corner. Each profile's transform is evaluated analytically or from a radial table on a
grid reaching 1.5 x the Nyquist frequency: the Kolmogorov core (GalSim's k0), the Moffat wing (its
closed form), exponential disks (closed form), de Vaucouleurs bulges (a radial table of GalSim's own
transform); sheared profiles through GalSim's shear matrix. The product profile x PSF x pixel response
is folded back to the pixel grid (which is what sampling does, aliasing included) and inverse-
transformed. The result equals GalSim's drawImage to < 1e-4 of the peak in typical seeing (tested).
Each band is drawn on its own native pixel grid, offset from r's by a sub-pixel shift, as SDSS's five
CCDs see the sky. The noise model is SDSS's: Poisson electrons from sky + object, read/dark variance,
saturation with charge bleeding along columns, then sky subtraction and calibration to nanomaggies.
Detection mirrors `stargal_jax.sdss_frames.detect_sources` on the native r patch; the cutout is then
made as that module makes real cutouts: every band interpolated by cubic spline (its `resample`) at
the r-band windowed centroid plus the band's offset, so the interpolation's correlated noise is there.
"""

import dataclasses
import functools

import galsim
import numpy as np
import sep
from scipy import special

from stargal_jax import sdss_frames
from stargal_jax.simulate import params as P
from stargal_jax.simulate.populations import Conditions, FaintBackground, Source

GRID = 128  # periodic FFT grid in pixels (native patch = rows/cols 0..NATIVE-1 of it)
# Fourier grid index m in [-span, span), folded onto the grid: span 64 is the Nyquist frequency, 96 is
# 1.5 x Nyquist. The span is chosen per scene from the sharpest band's seeing (`fourier_span`): the
# PSF x pixel transform beyond it is below SPAN_TOLERANCE of its peak.
SPANS = (64, 80, 96)
HALF_SPAN = 96  # the widest
SPAN_TOLERANCE = 1e-3
COMPLEX = np.complex64  # transforms in single precision: 1e-7 of the flux, far below any noise
NATIVE = 80  # native patch: the 64-pixel cutout at any sub-pixel position plus the spline's margin
NATIVE_CENTRE = 40  # the central object lies in native pixel [40, 41) on both axes
GRI = (1, 2, 3)
EXPONENTIAL_HLR_PER_SCALE = 1.6783469900166605  # half-light radius / scale length of an exponential


@functools.lru_cache(maxsize=4)
def fourier_axes(span: int = HALF_SPAN) -> tuple[float, np.ndarray, np.ndarray]:
  """(dk in rad/arcsec, k values along one axis, pixel response along one axis)."""
  dk = 2 * np.pi / (GRID * P.PIXEL_SCALE_ARCSEC)
  k = np.arange(-span, span) * dk
  pixel = np.sinc(k * P.PIXEL_SCALE_ARCSEC / (2 * np.pi))  # box pixel: sin(k s/2) / (k s/2)
  return dk, k, pixel


def fourier_span(fwhm_arcsec) -> int:
  """The smallest span of SPANS at whose edge a Kolmogorov of the sharpest FWHM times the pixel
  response is below SPAN_TOLERANCE (the wings only lower it)."""
  sharpest = float(np.min(fwhm_arcsec))
  dk = 2 * np.pi / (GRID * P.PIXEL_SCALE_ARCSEC)
  for span in SPANS:
    k = span * dk
    pixel = np.sinc(k * P.PIXEL_SCALE_ARCSEC / (2 * np.pi))
    if np.exp(-k ** (5.0 / 3.0) * kolmogorov_scale(sharpest)) * abs(pixel) < SPAN_TOLERANCE:
      return span
  return SPANS[-1]


@functools.lru_cache(maxsize=4)
def k_products(span: int = HALF_SPAN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(kx^2, kx ky, ky^2) on the grid, for quadratic forms |S k|^2."""
  _, k, _ = fourier_axes(span)
  kx, ky = k[None, :], k[:, None]
  return kx * kx + 0 * ky, kx * ky, ky * ky + 0 * kx


@functools.lru_cache(maxsize=4)
def k_radius(span: int = HALF_SPAN) -> np.ndarray:
  kxx, _, kyy = k_products(span)
  return np.sqrt(kxx + kyy)


def kimage(profile: galsim.GSObject, span: int = HALF_SPAN) -> np.ndarray:
  """GalSim's transform of a profile on the unfolded grid, array[ky, kx], value(0,0) = flux."""
  dk, _, _ = fourier_axes(span)
  image = galsim.ImageCD(galsim.BoundsI(-span, span - 1, -span, span - 1), scale=dk)
  profile.drawKImage(image=image, recenter=False)
  return image.array


def sheared_k_squared(g1: float = 0.0, g2: float = 0.0, q: float | None = None, beta_rad: float = 0.0,
                      span: int = HALF_SPAN) -> np.ndarray:
  """|S k|^2 on the grid for GalSim's shear matrix S (by g1, g2, or by axis ratio q and angle beta):
  the transform of a sheared circular profile f(S^-1 x) is F(|S^T k|), S symmetric."""
  shear = galsim.Shear(q=q, beta=beta_rad * galsim.radians) if q is not None else galsim.Shear(g1=g1, g2=g2)
  s = shear.getMatrix()
  a = s[0, 0] ** 2 + s[1, 0] ** 2
  b = s[0, 0] * s[0, 1] + s[1, 0] * s[1, 1]
  c = s[0, 1] ** 2 + s[1, 1] ** 2
  kxx, kxy, kyy = k_products(span)
  return a * kxx + (2 * b) * kxy + c * kyy


def sheared_k_radius(g1: float = 0.0, g2: float = 0.0, q: float | None = None, beta_rad: float = 0.0,
                     span: int = HALF_SPAN) -> np.ndarray:
  return np.sqrt(sheared_k_squared(g1, g2, q, beta_rad, span))


def kolmogorov_kimage(fwhm: float, g1: float, g2: float, span: int = HALF_SPAN) -> np.ndarray:
  """Sheared Kolmogorov transform exp(-(|S k| / k0)^(5/3)), with GalSim's k0 (equal to its
  drawKImage to 1e-14, tested)."""
  return np.exp(-kolmogorov_exponent(g1, g2, span) * kolmogorov_scale(fwhm))


def kolmogorov_scale(fwhm: float) -> float:
  """k0^(-5/3) of GalSim's Kolmogorov of this FWHM (its transform is exp(-(k / k0)^(5/3)))."""
  v = galsim.Kolmogorov(fwhm=fwhm).kValue(galsim.PositionD(1.0, 0.0)).real
  return float(-np.log(v))  # = (1 / k0)^(5/3) at |k| = 1


@functools.lru_cache(maxsize=64)
def kolmogorov_exponent(g1: float, g2: float, span: int = HALF_SPAN) -> np.ndarray:
  """|S k|^(5/3) for a PSF shear (cached: a field's shears are shared by its objects)."""
  out = np.power(sheared_k_squared(g1, g2, span=span), 5.0 / 6.0)
  out.flags.writeable = False
  return out


def moffat_transform(k: np.ndarray, beta: float, fwhm: float) -> np.ndarray:
  """Unit-flux untruncated Moffat (1 + r^2/a^2)^-beta, beta > 1: 2 (ka/2)^(beta-1) K_(beta-1)(ka) / Gamma(beta-1)."""
  a = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
  x = np.maximum(np.asarray(k, dtype=np.float64) * a, 1e-12)
  nu = beta - 1.0
  return 2.0 * (x / 2.0) ** nu * special.kv(nu, x) / special.gamma(nu)


@functools.lru_cache(maxsize=64)
def wing_kimage(fraction: float = P.PSF_WING_FRACTION, beta: float = P.PSF_WING_BETA,
                fwhm: float = P.PSF_WING_FWHM_ARCSEC, span: int = HALF_SPAN) -> np.ndarray:
  """Transform of (1 - f) delta + f Moffat: the scattering wings every band's core is convolved with."""
  out = (1.0 - fraction) + fraction * moffat_transform(k_radius(span), beta, fwhm)
  out.flags.writeable = False
  return out


@functools.lru_cache(maxsize=64)
def pixel_wing_kimage(wing_fraction: float, span: int = HALF_SPAN) -> np.ndarray:
  _, _, pixel = fourier_axes(span)
  out = np.outer(pixel, pixel) * (wing_kimage(fraction=wing_fraction, span=span) if wing_fraction > 0 else 1.0)
  out.flags.writeable = False
  return out


def psf_pixel_kimages(conditions: Conditions, wings: bool = True, span: int = HALF_SPAN) -> np.ndarray:
  """(5, K, K) transforms of PSF x pixel response, per band (real: the profiles are symmetric)."""
  pixel_2d = pixel_wing_kimage(float(conditions.psf_wing_fraction) if wings else 0.0, span)
  out = np.empty((5,) + pixel_2d.shape)
  for b in range(5):
    exponent = kolmogorov_exponent(float(conditions.psf_g1[b]), float(conditions.psf_g2[b]), span)
    np.multiply(exponent, -kolmogorov_scale(float(conditions.psf_fwhm_arcsec[b])), out=out[b])
  np.exp(out, out=out)
  out *= pixel_2d
  return out


def psf_profile(conditions: Conditions, band: int, wings: bool = True) -> galsim.GSObject:
  """The same PSF as a GalSim object (for tests and drawing)."""
  core = galsim.Kolmogorov(fwhm=float(conditions.psf_fwhm_arcsec[band])).shear(
    g1=float(conditions.psf_g1[band]), g2=float(conditions.psf_g2[band]))
  f = float(conditions.psf_wing_fraction)
  if not wings or f <= 0:
    return core
  wing = (1 - f) * galsim.DeltaFunction() + f * galsim.Moffat(beta=P.PSF_WING_BETA, fwhm=P.PSF_WING_FWHM_ARCSEC)
  return galsim.Convolve(core, wing)


def exponential_transform(k: np.ndarray, hlr: float) -> np.ndarray:
  """Unit-flux exponential disk of half-light radius hlr: (1 + (k r_s)^2)^-3/2."""
  return exponential_transform_k2(np.square(k), hlr)


def exponential_transform_k2(k_squared: np.ndarray, hlr: float) -> np.ndarray:
  """The same from |k|^2 (no square root needed)."""
  rs = hlr / EXPONENTIAL_HLR_PER_SCALE
  x = 1.0 + k_squared * (rs * rs)
  return 1.0 / (x * np.sqrt(x))


@functools.lru_cache(maxsize=1)
def devaucouleurs_table() -> tuple[np.ndarray, np.ndarray]:
  """(log k hlr, log F) of GalSim's unit de Vaucouleurs transform (hlr = 1), for interpolation."""
  profile = galsim.DeVaucouleurs(half_light_radius=1.0)
  k = np.geomspace(1e-4, 3e4, 3000)
  values = np.array([profile.kValue(galsim.PositionD(float(x), 0.0)).real for x in k])
  return np.log(k), np.log(np.maximum(values, 1e-300))


def devaucouleurs_transform(k: np.ndarray, hlr: float) -> np.ndarray:
  return devaucouleurs_transform_k2(np.square(k), hlr)


def devaucouleurs_transform_k2(k_squared: np.ndarray, hlr: float) -> np.ndarray:
  """Unit-flux de Vaucouleurs transform from |k|^2, interpolating GalSim's in log-log."""
  log_k, log_f = devaucouleurs_table()
  x = 0.5 * np.log(np.maximum(k_squared * (hlr * hlr), 1e-300))
  return np.exp(np.interp(x, log_k, log_f, left=0.0, right=-np.inf))  # beyond k hlr = 3e4: < 1e-8


def galaxy_profiles(source: Source) -> tuple[galsim.GSObject, galsim.GSObject]:
  """Unit-flux bulge and disk as GalSim objects, sharing a position angle (for tests and drawing)."""
  beta = source.beta_rad * galsim.radians
  bulge = galsim.DeVaucouleurs(half_light_radius=max(source.bulge_hlr_arcsec, 1e-3))
  disk = galsim.Exponential(half_light_radius=max(source.disk_hlr_arcsec, 1e-3))
  return bulge.shear(q=source.bulge_q, beta=beta), disk.shear(q=source.disk_q, beta=beta)


def shift_phase(x: float, y: float, span: int = HALF_SPAN) -> np.ndarray:
  """exp(-i k . r) for a source at pixel (x, y): moves a profile centred at the origin there."""
  _, k, _ = fourier_axes(span)
  return np.outer(np.exp(-1j * k * y * P.PIXEL_SCALE_ARCSEC).astype(COMPLEX),
                  np.exp(-1j * k * x * P.PIXEL_SCALE_ARCSEC).astype(COMPLEX))


def source_components(source: Source, span: int = HALF_SPAN) -> tuple[list, np.ndarray]:
  """Unit-flux component transforms (shifted to the source position) and per-band fluxes.

  Returns (components, weights) with weights[c, band] the flux (nanomaggies) of component c.
  """
  shift = shift_phase(source.x, source.y, span)
  flux = source.flux_nmgy()
  if source.is_point:
    return [shift], flux[None, :]
  components, weights = [], []
  bulge_share = np.asarray(source.bulge_fraction, dtype=np.float64)
  if source.bulge_hlr_arcsec > 0 and bulge_share.max() > 0:
    k2 = sheared_k_squared(q=source.bulge_q, beta_rad=source.beta_rad, span=span)
    components.append(devaucouleurs_transform_k2(k2, max(source.bulge_hlr_arcsec, 1e-3)).astype(np.float32) * shift)
    weights.append(flux * bulge_share)
  k2 = sheared_k_squared(q=source.disk_q, beta_rad=source.beta_rad, span=span)
  components.append(exponential_transform_k2(k2, max(source.disk_hlr_arcsec, 1e-3)).astype(np.float32) * shift)
  weights.append(flux * (1 - bulge_share))
  return components, np.stack(weights)


def _fold_axis(t: np.ndarray, axis: int) -> np.ndarray:
  """Unfolded index u = m + span (m in [-span, span)) goes to bin m mod GRID: u < span to
  GRID - span + u, u >= span to u - span."""
  span = t.shape[axis] // 2
  shape = list(t.shape)
  shape[axis] = GRID
  out = np.zeros(shape, dtype=t.dtype)
  def at(axis_slice):
    index = [slice(None)] * t.ndim
    index[axis] = axis_slice
    return tuple(index)
  out[at(slice(GRID - span, GRID))] += t[at(slice(0, span))]
  out[at(slice(0, span))] += t[at(slice(span, 2 * span))]
  return out


def fold(transform: np.ndarray) -> np.ndarray:
  """Folds a transform on the unfolded grid onto the GRID x GRID pixel-frequency grid (sampling:
  frequency index m goes to m mod GRID)."""
  return _fold_axis(_fold_axis(np.asarray(transform), -1), -2)


def to_stamp(transform: np.ndarray, size: int = NATIVE, folded: bool = False) -> np.ndarray:
  """Inverse transform (after folding), cut to the first `size` rows and columns (float64)."""
  grid = transform if folded else fold(transform)
  return np.fft.ifft2(grid).real[..., :size, :size]


def faint_background_kimage(background: FaintBackground, span: int = HALF_SPAN) -> np.ndarray:
  """(5, K, K) transform of the faint background on the unfolded grid (before the PSF): the sources
  put on the pixel grid by bilinear weights (sub-pixel accuracy is immaterial at S/N << 1), whose
  GRID-periodic DFT is read at every unfolded frequency, times one exponential profile of the given
  size. One r-band texture scaled by the mean colour per band (their colour scatter is invisible)."""
  out = np.zeros((5, 2 * span, 2 * span), dtype=COMPLEX)
  if len(background.x) == 0:
    return out
  x0, y0 = np.floor(background.x).astype(int), np.floor(background.y).astype(int)
  fx, fy = background.x - x0, background.y - y0
  flux_r = background.flux[:, 2]
  deltas = np.zeros(GRID * GRID)
  for ox, oy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
    flat = ((y0 + oy) % GRID) * GRID + (x0 + ox) % GRID
    deltas += np.bincount(flat, weights=w * flux_r, minlength=GRID * GRID)
  # The DFT of pixel-grid deltas, with the pixel-centre convention of the rest of the renderer: a delta
  # at pixel (x, y) is the shift exp(-i k (x, y)) at the unfolded frequencies.
  dft = np.fft.fft2(deltas.reshape(GRID, GRID).astype(np.float32))
  bins = np.arange(-span, span) % GRID
  profile = exponential_transform_k2(np.square(k_radius(span)), background.hlr_arcsec).astype(np.float32)
  texture = dft[bins[:, None], bins[None, :]] * profile
  ratio = background.flux.sum(axis=0) / max(float(flux_r.sum()), 1e-30)
  return ratio.astype(np.float32)[:, None, None] * texture[None]


@dataclasses.dataclass(frozen=True)
class Scene:
  """Noiseless native images (nanomaggies): bands (5, NATIVE, NATIVE), each on its own pixel grid;
  objects_gri[j] the g+r+i image of sources[mask_sources[j]] on the r grid; central_r the central
  object alone in r."""
  bands: np.ndarray
  objects_gri: np.ndarray
  central_r: np.ndarray


PSF_FWHM_DECIMALS = 3  # PSF transforms are cached per 0.001" of FWHM (the per-object jitter is ~0.03")


@functools.lru_cache(maxsize=512)
def psf_pixel_kimage(fwhm: float, g1: float, g2: float, wing_fraction: float, span: int) -> np.ndarray:
  """One band's PSF x pixel transform (float32, cached)."""
  exponent = kolmogorov_exponent(g1, g2, span)
  out = (np.exp(-exponent * kolmogorov_scale(fwhm)) * pixel_wing_kimage(wing_fraction, span)).astype(np.float32)
  out.flags.writeable = False
  return out


class PreparedScene:
  """A scene's transforms, made once and drawn band by band: the detection needs only r, and the other
  bands and the truth images are drawn only for detected objects."""

  def __init__(self, sources: list[Source], conditions: Conditions, band_shifts: np.ndarray | None = None,
               background: FaintBackground | None = None, wings: bool = True, size: int = NATIVE,
               span: int | None = None):
    self.span = fourier_span(conditions.psf_fwhm_arcsec) if span is None else span
    self.conditions, self.wings, self.size = conditions, wings, size
    self.band_shifts = band_shifts
    comps, weights, owner = [], [], []
    for index, source in enumerate(sources):
      c, w = source_components(source, self.span)
      comps += c
      weights.append(w)
      owner += [index] * len(c)
    self.shape = comps[0].shape
    self.stacked = np.stack(comps).reshape(len(comps), -1).view(np.float32)  # (n, 2 K^2): re, im interleaved
    self.weights = np.concatenate(weights).astype(np.float32)  # (n_components, 5)
    self.owner = np.array(owner)
    self.n_sources = len(sources)
    self.background = faint_background_kimage(background, self.span) if background is not None else None
    self._psf = {}

  def psf(self, band: int) -> np.ndarray:
    if band not in self._psf:
      c = self.conditions
      self._psf[band] = psf_pixel_kimage(round(float(c.psf_fwhm_arcsec[band]), PSF_FWHM_DECIMALS), float(c.psf_g1[band]),
                                         float(c.psf_g2[band]), float(c.psf_wing_fraction) if self.wings else 0.0,
                                         self.span)
    return self._psf[band]

  def combine(self, w: np.ndarray) -> np.ndarray:
    """(m, n) real weights @ the stacked transforms -> (m, K, K) complex. einsum, not BLAS: for these
    thin products BLAS threads cost more than they give (30x slower on a loaded 2-core machine)."""
    return np.einsum("mn,nk->mk", w, self.stacked).view(COMPLEX).reshape((len(w),) + self.shape)

  def bands(self, bands=range(5)) -> np.ndarray:
    """(len(bands), size, size) noiseless images of the whole scene, each band on its own pixel grid."""
    bands = list(bands)
    band_sum = self.combine(self.weights[:, bands].T)
    for row, b in enumerate(bands):
      if self.background is not None:
        band_sum[row] += self.background[b]
      if self.band_shifts is not None and np.any(self.band_shifts[b]):
        band_sum[row] *= shift_phase(float(self.band_shifts[b][0]), float(self.band_shifts[b][1]), self.span)
      band_sum[row] *= self.psf(b)
    return np.fft.ifft2(fold(band_sum)).real[:, :self.size, :self.size].astype(np.float64)

  def central_r(self) -> np.ndarray:
    """The central object (source 0) alone in r, on the r grid."""
    w = np.where(self.owner == 0, self.weights[:, 2], 0.0).astype(np.float32)[None]
    return to_stamp(self.combine(w)[0] * self.psf(2), self.size).astype(np.float64)

  def objects_gri(self, mask_sources: list[int] | None = None, origin: tuple[float, float] = (0.0, 0.0),
                  size: int | None = None) -> np.ndarray:
    """(n, size, size) each listed source's own g+r+i image on the r grid (default all sources), the grid
    starting at r-pixel `origin` (x, y): drawn exactly by shifting the transforms, no interpolation."""
    size = self.size if size is None else size
    mask_sources = list(range(self.n_sources)) if mask_sources is None else list(mask_sources)
    if not mask_sources:
      return np.zeros((0, size, size))
    select = np.zeros((len(mask_sources), len(self.owner)), np.float32)
    for row, index in enumerate(mask_sources):
      select[row, self.owner == index] = 1.0
    gri = sum(self.combine(select * self.weights[:, b][None]) * self.psf(b)[None] for b in GRI)
    if origin[0] or origin[1]:
      gri = gri * shift_phase(-float(origin[0]), -float(origin[1]), self.span)[None]
    return to_stamp(gri, size).astype(np.float64)


def render_scene(sources: list[Source], conditions: Conditions, band_shifts: np.ndarray | None = None,
                 background: FaintBackground | None = None, mask_sources: list[int] | None = None,
                 wings: bool = True, size: int = NATIVE, span: int | None = None) -> Scene:
  """Noiseless images of a scene. sources[0] is the central object; positions are r-grid pixels and
  band b sees the scene shifted by band_shifts[b] = (dx, dy) pixels (its own grid); `mask_sources`
  are the sources whose own g+r+i images are wanted (default all)."""
  scene = PreparedScene(sources, conditions, band_shifts, background, wings, size, span)
  return Scene(bands=scene.bands(), objects_gri=scene.objects_gri(mask_sources), central_r=scene.central_r())


def matched_filter_snr(model_nmgy: np.ndarray, conditions: Conditions, band: int) -> float:
  """Optimal S/N of a known profile: sqrt(sum model^2 / variance), variance = sky + object shot."""
  sky_var = conditions.sky_sigma_nmgy()[band] ** 2
  shot_var = np.clip(model_nmgy, 0, None) * conditions.nmgy_per_dn[band] / conditions.gain[band]
  return float(np.sqrt(np.sum(model_nmgy ** 2 / (sky_var + shot_var))))


def saturation_levels_dn() -> np.ndarray:
  """Per-band saturation level in raw counts (sky included): the plateau measured on real frames."""
  return np.full(5, min(P.SATURATION_DN, P.ADC_MAX_DN))


def bleed_columns(dn: np.ndarray, level: float) -> tuple[np.ndarray, bool]:
  """Clips one band (rows, cols) at `level` and spreads the excess along each column.

  Excess charge of a column fills the pixels beyond either end of its saturated run up to the
  level, half going each way; charge carried past the stamp edge is lost, as in a cutout.
  """
  over = dn > level
  if not over.any():
    return dn, False
  out = dn.copy()
  for col in np.flatnonzero(over.any(axis=0)):
    rows = np.flatnonzero(over[:, col])
    excess = float(np.sum(out[rows, col] - level))
    out[rows, col] = level
    for start, step in ((rows[0] - 1, -1), (rows[-1] + 1, 1)):
      charge = excess / 2
      row = start
      while charge > 0 and 0 <= row < dn.shape[0]:
        room = max(level - out[row, col], 0.0)
        take = min(room, charge)
        out[row, col] += take
        charge -= take
        row += step
  return out, True


def observe(noiseless_nmgy: np.ndarray, conditions: Conditions, rng: np.random.Generator,
            bands=range(5)) -> tuple[np.ndarray, bool]:
  """SDSS noise model of the listed bands; returns the sky-subtracted calibrated images (float64 nmgy)
  and whether any pixel saturated.

  DN = expected + noise_scale x (Poisson(gain (object + sky)) / gain - expected + N(0, dark variance)),
  saturated and bled; then the sky level is subtracted and DN are converted to nanomaggies (SDSS frame
  data model).
  """
  bands = list(bands)
  nmgy = conditions.nmgy_per_dn[bands, None, None]
  sky = conditions.sky_dn[bands, None, None]
  gain = conditions.gain[bands, None, None]
  scale = np.asarray(conditions.noise_scale, dtype=np.float64)[bands, None, None]
  expected_dn = np.clip(noiseless_nmgy, 0, None) / nmgy + sky
  deviation = rng.poisson(expected_dn * gain) / gain - expected_dn
  deviation += rng.normal(0, 1, deviation.shape) * np.sqrt(np.asarray(conditions.dark_variance)[bands])[:, None, None]
  dn = expected_dn + scale * deviation  # the measured noise level of real frames (noise_scale)
  levels = saturation_levels_dn()[bands]
  saturated = False
  for b in range(len(dn)):
    dn[b], hit = bleed_columns(dn[b], levels[b])
    saturated |= hit
  return (dn - sky) * nmgy, saturated


@dataclasses.dataclass(frozen=True)
class Detection:
  """The central object as the r-band detection sees it (native r pixels)."""
  detected: bool
  x: float = np.nan
  y: float = np.nan
  snr: float = 0.0
  saturated: bool = False


def detect_central(image_r: np.ndarray, conditions: Conditions, true_xy: tuple[float, float],
                   residual_r: float = 0.0) -> Detection:
  """`sdss_frames.detect_sources` on a native r patch, for the object at `true_xy`: SEP at 1.5 sigma of
  the sky noise (3x3 filter), >= 5 pixels, deblending 32 / 0.005; the detection nearest the object
  (within DETECT_MATCH_RADIUS_PX), its windowed centroid, S/N in the 5 px aperture with the noise
  map of the data model, saturation from the raw counts in its box. The frame's residual background,
  which detection removes with a 64-px mesh, is the known residual sky here."""
  band = 2
  data = np.ascontiguousarray(image_r - residual_r, dtype=np.float64)
  sky_dn = float(conditions.sky_dn[band])
  calib = np.full(data.shape[1], conditions.nmgy_per_dn[band])
  sky = np.full(data.shape, sky_dn)
  gain, dark = float(conditions.gain[band]), float(conditions.dark_variance[band])
  sky_noise = float(conditions.sky_sigma_nmgy()[band])
  objects = sep.extract(data, sdss_frames.DETECT_THRESH_SIGMA, err=sky_noise, minarea=sdss_frames.DETECT_MINAREA,
                        deblend_nthresh=32, deblend_cont=0.005)
  if len(objects) == 0:
    return Detection(False)
  distance = np.hypot(objects["x"] - true_xy[0], objects["y"] - true_xy[1])
  best = int(np.argmin(distance))
  if distance[best] > P.DETECT_MATCH_RADIUS_PX:
    return Detection(False)
  o = objects[best:best + 1]
  x, y = float(o["x"][0]), float(o["y"][0])
  xw, yw, flag = sep.winpos(data, o["x"], o["y"], np.array([sdss_frames.WINDOW_SIGMA]))
  if flag[0] == 0 and np.isfinite(xw[0]) and np.isfinite(yw[0]) and np.hypot(xw[0] - x, yw[0] - y) <= 2.0:
    x, y = float(xw[0]), float(yw[0])
  noise = sdss_frames.noise_map(data, calib, sky, gain, dark)
  flux, fluxerr, aper_flag = sep.sum_circle(data, np.array([x]), np.array([y]), sdss_frames.APERTURE_RADIUS,
                                            err=np.ascontiguousarray(noise, dtype=np.float64))
  snr = float(flux[0] / fluxerr[0]) if fluxerr[0] > 0 else 0.0
  counts = data / calib[None, :] + sky
  box = counts[max(o["ymin"][0] - 2, 0):o["ymax"][0] + 3, max(o["xmin"][0] - 2, 0):o["xmax"][0] + 3]
  saturated = bool(box.max() >= sdss_frames.SATURATION_COUNTS)
  bad = sep.OBJ_DOVERFLOW | sep.OBJ_SINGU | sep.APER_TRUNC
  ok = ((int(o["flag"][0]) | int(aper_flag[0])) & bad) == 0
  return Detection(detected=bool(ok), x=x, y=y, snr=snr, saturated=saturated)


def cutout_grid(x: float, y: float, size: int = P.STAMP_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """Sampling positions of a cutout centred on (x, y): pixel (i, j) samples (x + j - 32, y + i - 32)."""
  offsets = sdss_frames.cutout_offsets(size)
  gx, gy = np.meshgrid(x + offsets, y + offsets)
  return gx, gy


def resample_to_cutout(native: np.ndarray, x: float, y: float, band_shifts: np.ndarray | None = None,
                       order: int = 3) -> np.ndarray:
  """(bands, 64, 64) cutout of native images (bands, N, N) centred on r-grid position (x, y): band b
  sampled at (x, y) + band_shifts[b] on its own grid by `sdss_frames.resample` (cubic B-spline)."""
  out = np.empty((len(native), P.STAMP_SIZE, P.STAMP_SIZE))
  for b in range(len(native)):
    dx, dy = (0.0, 0.0) if band_shifts is None else band_shifts[b]
    gx, gy = cutout_grid(x + dx, y + dy)
    out[b] = sdss_frames.resample(native[b], gx, gy, order=order)
  return out


def integer_cutout(native: np.ndarray, x: float, y: float) -> tuple[np.ndarray, int, int]:
  """Native pixels of a cutout whose pixel 32 holds (x, y) (no interpolation): (cut, x0, y0)."""
  x0, y0 = int(np.floor(x + 0.5)) - P.CENTRE_PIXEL, int(np.floor(y + 0.5)) - P.CENTRE_PIXEL
  return native[..., y0:y0 + P.STAMP_SIZE, x0:x0 + P.STAMP_SIZE], x0, y0


def edge_strip(side: int, width: int, n: int = P.STAMP_SIZE) -> np.ndarray:
  """(n, n) bool strip of `width` px along side 0 left, 1 right, 2 bottom (row 0), 3 top."""
  strip = np.zeros((n, n), dtype=bool)
  if side == 0:
    strip[:, :width] = True
  elif side == 1:
    strip[:, n - width:] = True
  elif side == 2:
    strip[:width, :] = True
  else:
    strip[n - width:, :] = True
  return strip


def edge_defect_mask(rng: np.random.Generator) -> np.ndarray:
  """(5, 64, 64) bool: the part of a cutout beyond a frame edge (NaN in the study's cutouts).

  A strip 2-20 px wide along one side or, one time in four, a corner block (the overlap of a
  vertical and a horizontal strip). The bands are not pixel-aligned in SDSS, so each band's edge
  moves by up to 2 px.
  """
  corner = rng.random() < 0.25
  sides = [int(rng.integers(0, 2)), int(rng.integers(2, 4))] if corner else [int(rng.integers(0, 4))]
  widths = rng.integers(2, 21, size=len(sides))
  mask = np.empty((5, P.STAMP_SIZE, P.STAMP_SIZE), dtype=bool)
  for b in range(5):
    strips = [edge_strip(side, int(np.clip(w + rng.integers(-2, 3), 1, P.STAMP_SIZE // 2)))
              for side, w in zip(sides, widths)]
    mask[b] = np.logical_and.reduce(strips)
  return mask


def segmentation_mask(objects_gri: np.ndarray, threshold: float) -> np.ndarray:
  """uint8 truth mask: 1 + index of the source with the most noiseless g+r+i flux in the pixel,
  where that source's flux exceeds `threshold`; 0 elsewhere (central source -> 1)."""
  if len(objects_gri) == 0:
    return np.zeros(objects_gri.shape[1:] if objects_gri.ndim == 3 else (P.STAMP_SIZE, P.STAMP_SIZE), dtype=np.uint8)
  best = np.argmax(objects_gri, axis=0)
  value = np.max(objects_gri, axis=0)
  return np.where(value > threshold, best + 1, 0).astype(np.uint8)
