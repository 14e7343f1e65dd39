"""Turns sources and conditions into SDSS-like pixels: PSF convolution, noise, saturation, defects.

Rendering is done in Fourier space. GalSim supplies each profile's transform (Kolmogorov PSF,
de Vaucouleurs bulge, exponential disk), evaluated on a grid reaching 1.5 x the Nyquist
frequency; the product profile x PSF x pixel response is folded back to the pixel grid (which is
what sampling does, aliasing included) and inverse-transformed on a 128-pixel periodic grid, of
which the 64-pixel stamp is one corner. The result equals GalSim's drawImage to < 1e-4 of the peak
in typical seeing (5e-4 at the 0.7" floor) at ~1/10 of its cost for large galaxies. Light more than ~64 px from the stamp cannot wrap
into it. Linearity lets one pass give each band's image and each object's own g+r+i image (for
the truth mask). The noise model is SDSS's: Poisson electrons from sky + object, read/dark
variance, saturation with charge bleeding along columns, then sky subtraction and calibration to
nanomaggies.
"""

import functools

import galsim
import numpy as np

from stargal_jax.simulate import params as P
from stargal_jax.simulate.populations import Conditions, Source

GRID = 128  # periodic FFT grid in pixels (stamp = rows/cols 0..63 of it)
HALF_SPAN = 96  # Fourier grid index m in [-96, 96): |k| up to 1.5 x Nyquist, folded onto the grid
GRI = (1, 2, 3)


@functools.lru_cache(maxsize=1)
def fourier_axes() -> tuple[float, np.ndarray, np.ndarray]:
  """(dk in rad/arcsec, k values along one axis, pixel response along one axis).

  Beyond 1.5 x Nyquist the PSF x pixel transform is below 1e-3 of its peak even in 0.7" seeing.
  """
  dk = 2 * np.pi / (GRID * P.PIXEL_SCALE_ARCSEC)
  k = np.arange(-HALF_SPAN, HALF_SPAN) * dk
  pixel = np.sinc(k * P.PIXEL_SCALE_ARCSEC / (2 * np.pi))  # box pixel: sin(k s/2) / (k s/2)
  return dk, k, pixel


def kimage(profile: galsim.GSObject) -> np.ndarray:
  """The profile's Fourier transform on the unfolded grid, array[ky, kx], value(0,0) = flux."""
  dk, _, _ = fourier_axes()
  image = galsim.ImageCD(galsim.BoundsI(-HALF_SPAN, HALF_SPAN - 1, -HALF_SPAN, HALF_SPAN - 1), scale=dk)
  profile.drawKImage(image=image, recenter=False)
  return image.array


def psf_profile(conditions: Conditions, band: int) -> galsim.GSObject:
  return galsim.Kolmogorov(fwhm=float(conditions.psf_fwhm_arcsec[band])).shear(
    g1=float(conditions.psf_g1[band]), g2=float(conditions.psf_g2[band]))


def kolmogorov_kimage(fwhm: float, g1: float, g2: float) -> np.ndarray:
  """Sheared Kolmogorov transform exp(-(|S k| / k0)^(5/3)), evaluated with numpy (GalSim's own
  k0 and shear matrix, ~5x faster than drawKImage; equal to it to 1e-14, tested)."""
  _, k, _ = fourier_axes()
  v = galsim.Kolmogorov(fwhm=fwhm).kValue(galsim.PositionD(1.0, 0.0)).real
  k0_sq = (1.0 / (-np.log(v)) ** 0.6) ** 2
  s = galsim.Shear(g1=g1, g2=g2).getMatrix()
  qx = s[0, 0] * k[None, :] + s[0, 1] * k[:, None]
  qy = s[1, 0] * k[None, :] + s[1, 1] * k[:, None]
  q_sq = (qx * qx + qy * qy) / k0_sq
  return np.exp(-np.power(q_sq, 5.0 / 6.0))


def psf_pixel_kimages(conditions: Conditions) -> np.ndarray:
  """(5, K, K) transforms of PSF x pixel response, per band."""
  _, _, pixel = fourier_axes()
  pixel_2d = np.outer(pixel, pixel)
  out = np.empty((5,) + pixel_2d.shape, dtype=np.complex128)
  for b in range(5):
    out[b] = kolmogorov_kimage(float(conditions.psf_fwhm_arcsec[b]), float(conditions.psf_g1[b]),
                               float(conditions.psf_g2[b])) * pixel_2d
  return out


def galaxy_profiles(source: Source) -> tuple[galsim.GSObject, galsim.GSObject]:
  """Unit-flux bulge and disk, sharing a position angle."""
  beta = source.beta_rad * galsim.radians
  bulge = galsim.DeVaucouleurs(half_light_radius=max(source.bulge_hlr_arcsec, 1e-3))
  disk = galsim.Exponential(half_light_radius=max(source.disk_hlr_arcsec, 1e-3))
  return bulge.shear(q=source.bulge_q, beta=beta), disk.shear(q=source.disk_q, beta=beta)


def source_components(source: Source) -> tuple[list, np.ndarray]:
  """Unit-flux component transforms (already shifted to the source position) and per-band fluxes.

  Returns (components, weights) with weights[c, band] the flux (nanomaggies) of component c.
  """
  _, k, _ = fourier_axes()
  shift = np.outer(np.exp(-1j * k * source.y * P.PIXEL_SCALE_ARCSEC), np.exp(-1j * k * source.x * P.PIXEL_SCALE_ARCSEC))
  flux = source.flux_nmgy()
  if source.is_point:
    return [shift], flux[None, :]
  bulge, disk = galaxy_profiles(source)
  weights = np.stack([flux * source.bulge_fraction, flux * (1 - source.bulge_fraction)])
  return [kimage(bulge) * shift, kimage(disk) * shift], weights


def to_stamp(transform: np.ndarray) -> np.ndarray:
  """Folds a transform onto the pixel grid (sampling), inverts it, cuts out the stamp (float64)."""
  pad = GRID - HALF_SPAN
  padded = np.zeros((2 * GRID, 2 * GRID), dtype=np.complex128)
  padded[pad:pad + 2 * HALF_SPAN, pad:pad + 2 * HALF_SPAN] = transform
  folded = padded.reshape(2, GRID, 2, GRID).sum(axis=(0, 2))  # index m -> m mod GRID
  return np.fft.ifft2(folded).real[:P.STAMP_SIZE, :P.STAMP_SIZE]


def render_scene(sources: list[Source], conditions: Conditions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Noiseless images of a scene in nanomaggies.

  Returns (bands, objects_gri, central_r): bands (5, 64, 64) is the whole scene per band;
  objects_gri (n_sources, 64, 64) each source's own g+r+i image (for the truth mask); central_r
  the first source alone in r (for its S/N).
  """
  psf = psf_pixel_kimages(conditions)
  band_sum = np.zeros_like(psf)
  objects_gri = np.empty((len(sources), P.STAMP_SIZE, P.STAMP_SIZE))
  central_r = None
  for index, source in enumerate(sources):
    components, weights = source_components(source)
    gri = 0
    for comp, w in zip(components, weights):
      for b in range(5):
        band_sum[b] += w[b] * comp
      gri = gri + comp * (w[1] * psf[1] + w[2] * psf[2] + w[3] * psf[3])
    objects_gri[index] = to_stamp(gri)
    if index == 0:
      central_r = to_stamp(band_sum[2] * psf[2])
  bands = np.stack([to_stamp(band_sum[b] * psf[b]) for b in range(5)])
  return bands, objects_gri, central_r


def matched_filter_snr(model_nmgy: np.ndarray, conditions: Conditions, band: int) -> float:
  """Optimal S/N of a known profile: sqrt(sum model^2 / variance), variance = sky + object shot."""
  sky_var = conditions.sky_sigma_nmgy()[band] ** 2
  shot_var = np.clip(model_nmgy, 0, None) * conditions.nmgy_per_dn[band] / conditions.gain[band]
  return float(np.sqrt(np.sum(model_nmgy ** 2 / (sky_var + shot_var))))


@functools.lru_cache(maxsize=1)
def saturation_levels_dn() -> np.ndarray:
  """Per-band saturation (DN, sky included) calibrated on SDSS's point-source saturation mags.

  A star of SATURATION_MAG, centred on a pixel, in median seeing and sky, just reaches it.
  """
  params = P.SimParams()
  levels = []
  for b in range(5):
    fwhm = params.seeing_r_median_arcsec * P.SEEING_RATIO_TO_R[b]
    star = galsim.Kolmogorov(fwhm=fwhm).drawImage(nx=65, ny=65, scale=P.PIXEL_SCALE_ARCSEC)
    peak_nmgy = star.array.max() * 10.0 ** (-0.4 * (P.SATURATION_MAG[b] - 22.5))
    sky_dn = 10.0 ** (-0.4 * (P.SKY_MAG_ARCSEC2[b] - 22.5)) * P.PIXEL_SCALE_ARCSEC ** 2 / P.NMGY_PER_DN[b]
    levels.append(min(peak_nmgy / P.NMGY_PER_DN[b] + sky_dn, P.ADC_MAX_DN))
  return np.array(levels)


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


def observe(noiseless_nmgy: np.ndarray, conditions: Conditions, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
  """SDSS noise model; returns the sky-subtracted calibrated image (float32 nmgy) and saturation.

  DN = Poisson(gain (object + sky)) / gain, saturated and bled, plus N(0, dark variance); then the
  sky level is subtracted and DN are converted to nanomaggies (SDSS frame data model).
  """
  nmgy = conditions.nmgy_per_dn[:, None, None]
  sky = conditions.sky_dn[:, None, None]
  gain = conditions.gain[:, None, None]
  expected_dn = np.clip(noiseless_nmgy, 0, None) / nmgy + sky
  dn = rng.poisson(expected_dn * gain) / gain
  levels = saturation_levels_dn()
  saturated = False
  for b in range(5):
    dn[b], hit = bleed_columns(dn[b], levels[b])
    saturated |= hit
  dn = dn + rng.normal(0, 1, dn.shape) * np.sqrt(conditions.dark_variance)[:, None, None]
  return ((dn - sky) * nmgy).astype(np.float32), saturated


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
    return np.zeros((P.STAMP_SIZE, P.STAMP_SIZE), dtype=np.uint8)
  best = np.argmax(objects_gri, axis=0)
  value = np.max(objects_gri, axis=0)
  return np.where(value > threshold, best + 1, 0).astype(np.uint8)
