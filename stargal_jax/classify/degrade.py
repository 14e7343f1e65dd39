"""Bright cutouts made to look like a set's faint end, label-free: the degradations of the bootstrapped design.

A bright object's morphology is unambiguous; the same object seen fainter, in worse seeing, in the set's own
noise, and (for galaxies) smaller, is what the faint end of the set looks like. Every target condition is
measured on the set itself without labels (`measure_conditions`):
- magnitudes: the set's own r-magnitude distribution (a source is only ever made fainter);
- noise: the per-band background noise of a random object of the set (1.4826 MAD at radius >= 24 px), and the
  set's noise power spectrum (correlated noise, as resampled frames have, is reproduced; white otherwise);
- seeing: the per-band adaptive sizes of the set's bright point-like objects (its stars);
- size: faint galaxies are intrinsically smaller (farther, or less luminous), so an image is shrunk about its
  centre by a factor s and reconvolved with the Gaussian that restores the PSF width (`shrink_and_reconvolve`):
  a star stays a star of the same width, a galaxy's intrinsic size falls by s. `psf_matched_shrink` does it
  exactly for the set's own PSF (its stacked stars, per band): deconvolve the shrunk PSF, reconvolve the set's.

`shrink_and_reconvolve`, the Gaussian-PSF version (used for shifts, and for noise gains), is one linear map per
band, separable in rows and columns: the band-limited image's
Fourier transform evaluated at k / s (the shrink, flux kept), times a Gaussian transfer function (the restoring
blur), times a phase (a sub-pixel shift), sampled back on the grid. For a Gaussian PSF of width p, shrinking by
s gives width p / s, and the blur of variance p^2 (1 - 1 / s^2) restores p exactly. Its noise gain is known in
closed form (`noise_gain`), so the added noise brings every pixel to the target variance exactly.

All of it is pure JAX (jitted and vmapped over a batch, explicit keys); `measure_conditions` is numpy.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stargal_jax import morphology, photometry

N_BANDS = 5
NOISE_CORRELATION_MAX_LAG = 2  # the noise autocorrelation is measured at lags |dy|, |dx| <= 2 px
NOISE_CLIP_SIGMA = 4.0  # pixels beyond this are sources, not noise, when measuring the autocorrelation


class Conditions(NamedTuple):
  """A set's observing conditions, measured without labels (`measure_conditions`)."""
  r_mag_sorted: np.ndarray  # (N,) the set's r magnitudes (7.4" aperture), ascending
  noise_sigma: np.ndarray  # (N, 5) each object's per-band background noise, nanomaggies
  psf_sigma: np.ndarray  # (5,) the set's PSF width per band (adaptive sigma of its stacked stars), px
  seeing_sigma: np.ndarray  # (M, 5) per-band adaptive sigma of each of its M stars, px: the seeing distribution
  noise_power: np.ndarray  # (5, H, W) the noise power spectrum per band, mean 1 (all ones: white noise)
  psf_images: np.ndarray  # (5, H, W) the set's PSF per band: unit-sum median stack of its stars, centred


# ------------------------------------------------------------------------------------ the linear map

def _frequencies(n: int) -> tuple[np.ndarray, np.ndarray]:
  """omega_k = 2 pi k / n for k = -n/2 .. n/2 with weight 1/2 at the two Nyquist ends: the symmetric set makes
  the resampling matrices real, and for s = 1, no shift, no blur, the identity."""
  k = np.arange(-(n // 2), n // 2 + 1)
  weight = np.ones(len(k))
  if n % 2 == 0:
    weight[[0, -1]] = 0.5
  return 2 * np.pi * k / n, weight


def resample_matrix(n: int, scale, shift, blur_sigma) -> jax.Array:
  """(..., n, n) real M with out[u] = sum_x M[u, x] f[x] in 1-D: f shrunk by `scale` about the centre c = n // 2
  (flux kept), moved by `shift` px, convolved with a Gaussian of `blur_sigma` px, band-limited.

  M[u, x] = (1/n) sum_k h_k exp(-blur^2 w_k^2 / 2) cos(w_k ((u - c - shift) - (x - c) / scale)).
  `scale`, `shift`, `blur_sigma` broadcast together (leading axes).
  """
  omega, weight = _frequencies(n)
  omega, weight = jnp.asarray(omega, jnp.float32), jnp.asarray(weight, jnp.float32)
  grid = jnp.arange(n, dtype=jnp.float32) - n // 2
  scale, shift, blur = (jnp.asarray(v, jnp.float32)[..., None, None] for v in (scale, shift, blur_sigma))
  out_phase = omega * (grid[:, None] - shift)  # (..., n, K)
  in_phase = omega * (grid[:, None] / scale)
  spectrum = weight * jnp.exp(-0.5 * (blur * omega) ** 2) / n  # (..., 1, K)
  # cos(a - b) = cos a cos b + sin a sin b: two (n, K) x (K, n) products instead of an (n, n, K) tensor.
  return (jnp.einsum("...uk,...xk->...ux", jnp.cos(out_phase) * spectrum, jnp.cos(in_phase))
          + jnp.einsum("...uk,...xk->...ux", jnp.sin(out_phase) * spectrum, jnp.sin(in_phase)))


def shrink_and_reconvolve(images, scale, shift_yx, blur_sigma):
  """(B, C, H, W) images shrunk by `scale` (B,) about the centre, shifted by `shift_yx` (B, 2) px, blurred by
  `blur_sigma` (B, C) px. Returns (images, (row_gain (B, C, H), col_gain (B, C, W))): the output noise
  variance of pixel (p, q) is sigma^2 row_gain[p] col_gain[q] for input white noise of variance sigma^2."""
  images = jnp.asarray(images, jnp.float32)
  m_rows, m_cols = _separable_matrices(images.shape[-2:], scale, shift_yx, blur_sigma)
  out = jnp.einsum("bcpy,bcyx,bcqx->bcpq", m_rows, images, m_cols)
  return out, (jnp.sum(m_rows ** 2, axis=-1), jnp.sum(m_cols ** 2, axis=-1))


def _separable_matrices(shape, scale, shift_yx, blur_sigma):
  """(rows (B, C, H, H), columns (B, C, W, W)) of `shrink_and_reconvolve`."""
  height, width = shape
  scale = jnp.asarray(scale, jnp.float32)[:, None]
  shift_yx = jnp.asarray(shift_yx, jnp.float32)
  return (resample_matrix(height, scale, shift_yx[:, 0:1], blur_sigma),
          resample_matrix(width, scale, shift_yx[:, 1:2], blur_sigma))


def gaussian_noise_gain(shape, scale, shift_yx, blur_sigma) -> jax.Array:
  """(B, C, H, W) the per-pixel noise variance gain of `shrink_and_reconvolve` (`noise_gain`), without an image."""
  m_rows, m_cols = _separable_matrices(shape, scale, shift_yx, blur_sigma)
  return noise_gain((jnp.sum(m_rows ** 2, axis=-1), jnp.sum(m_cols ** 2, axis=-1)))


def restoring_blur(psf_sigma, scale, target_sigma=None):
  """Blur sigma (px) that, after shrinking by `scale`, gives a Gaussian PSF of width psf_sigma back, broadened
  to `target_sigma` where that is wider: sqrt(p^2 (1 - 1/s^2) + max(t^2 - p^2, 0)). Broadcasts."""
  p2 = jnp.asarray(psf_sigma, jnp.float32) ** 2
  variance = p2 * (1.0 - 1.0 / jnp.asarray(scale, jnp.float32) ** 2)
  return _broadened(variance, p2, target_sigma)


def _broadened(variance, p2, target_sigma):
  if target_sigma is not None:
    variance = variance + jnp.maximum(jnp.asarray(target_sigma, jnp.float32) ** 2 - p2, 0.0)
  return jnp.sqrt(jnp.maximum(variance, 0.0))


def _dtft(n: int, frequency_scale) -> jax.Array:
  """(..., K, n) complex A[k, x] = exp(-i w_k f (x - c)): A f is the DTFT of the samples f at w_k f."""
  omega, _ = _frequencies(n)
  grid = jnp.arange(n, dtype=jnp.float32) - n // 2
  phase = jnp.asarray(frequency_scale, jnp.float32)[..., None, None] * jnp.asarray(omega, jnp.float32)[:, None] * grid
  return jnp.exp(-1j * phase)


def _inverse_dft(n: int, shift) -> jax.Array:
  """(..., n, K) complex E[u, k] = h_k exp(i w_k (u - c - shift)) / n (the symmetric frequency set)."""
  omega, weight = _frequencies(n)
  grid = jnp.arange(n, dtype=jnp.float32) - n // 2
  phase = jnp.asarray(omega, jnp.float32) * (grid[:, None] - jnp.asarray(shift, jnp.float32)[..., None, None])
  return jnp.asarray(weight, jnp.float32) * jnp.exp(1j * phase) / n


def psf_matched_shrink(images, scale, shift_yx, dilation, psf_images, regularisation: float = 1e-3):
  """(B, C, H, W) images shrunk by `scale` (B,) about the centre and reconvolved so that their PSF is the set's
  own PSF `psf_images` (C, H, W; unit sum, centred) dilated by `dilation` (B, C) >= 1 (worse seeing), moved by
  `shift_yx` (B, 2) px. Exact for band-limited images whose PSF is `psf_images`:

    out^(w) = exp(-i w shift) P^(w dilation) / P^(w / scale) x F^(w / scale),

  with F^(w / s) the image's transform at w / s (the shrink, flux kept; its PSF becomes P^(w / s)), divided by
  that (deconvolved; P^(w / s) is P^ at lower frequencies, where it is large) and multiplied by the PSF wanted.
  A star stays the set's PSF; a galaxy becomes the same galaxy s times smaller seen through it. P^ beyond the
  band (|w dilation| > pi) is taken as 0; `regularisation` (of P^(0) = 1) guards the division."""
  images = jnp.asarray(images, jnp.float32)
  _, _, height, width = images.shape
  if height != width:
    raise ValueError(f"square images only, got {height} x {width}")
  n = height
  omega, _ = _frequencies(n)
  scale = jnp.asarray(scale, jnp.float32)
  dilation = jnp.asarray(dilation, jnp.float32)
  psf = jnp.asarray(psf_images, jnp.float32)
  shrunk = _dtft(n, 1.0 / scale)[:, None]  # (B, 1, K, n)
  transform = lambda a, m: jnp.einsum("...ky,...yx,...lx->...kl", m, a.astype(jnp.complex64), m)
  image_hat = transform(images, shrunk)  # (B, C, K, K)
  psf_shrunk_hat = transform(psf[None], shrunk)
  dilated = _dtft(n, dilation)  # (B, C, K, n): the PSF's transform at w x dilation
  in_band = (jnp.abs(jnp.asarray(omega, jnp.float32)) * dilation[..., None] <= np.pi + 1e-6).astype(jnp.float32)
  psf_wanted_hat = transform(psf[None], dilated) * in_band[..., :, None] * in_band[..., None, :]
  # Where the shrunk PSF has no power (below the regularisation) the map passes the image through (1 when both
  # PSFs vanish: for s = 1 and no dilation it is the identity, noise included, at every frequency).
  eps2 = regularisation ** 2
  ratio = (psf_wanted_hat * jnp.conj(psf_shrunk_hat) + eps2) / (jnp.abs(psf_shrunk_hat) ** 2 + eps2)
  rows = _inverse_dft(n, jnp.asarray(shift_yx)[:, 0])[:, None]  # (B, 1, n, K)
  cols = _inverse_dft(n, jnp.asarray(shift_yx)[:, 1])[:, None]
  return jnp.real(jnp.einsum("...pk,...kl,...ql->...pq", rows, ratio * image_hat, cols))


def noise_gain(gains) -> jax.Array:
  """(B, C, H, W) variance gain map row_gain[p] col_gain[q] of `shrink_and_reconvolve`."""
  rows, cols = gains
  return rows[..., :, None] * cols[..., None, :]


def coloured_noise(key, power, shape) -> jax.Array:
  """Unit-variance Gaussian noise (shape (B, C, H, W)) with the power spectrum `power` (C, H, W), mean 1."""
  white = jax.random.normal(key, shape, jnp.float32)
  return jnp.real(jnp.fft.ifft2(jnp.fft.fft2(white) * jnp.sqrt(jnp.asarray(power, jnp.float32))))


def dihedral(key, images) -> jax.Array:
  """Each (C, H, W) image of the batch under a random element of the dihedral group D4 (rotations by 90 degrees
  and reflections; square images)."""
  k_rot, k_flip = jax.random.split(key)
  rotations = jax.random.randint(k_rot, (images.shape[0],), 0, 4)
  flips = jax.random.bernoulli(k_flip, 0.5, (images.shape[0],))

  def one(image, r, f):
    image = jnp.where(f, image[..., ::-1], image)
    return jax.lax.switch(r, [lambda a, k=k: jnp.rot90(a, k, axes=(-2, -1)) for k in range(4)], image)

  return jax.vmap(one)(images, rotations, flips)


# ------------------------------------------------------------------------------------ the degradation

class DegradeOptions(NamedTuple):
  """Static settings of `degrade` (from config.bootstrap.degrade)."""
  shrink_exponent_max: float  # s = 10^(0.2 a (m_target - m_source)), a ~ U(0, this); 0: no shrinking
  max_scale: float  # s is clipped to [1, max_scale]
  broaden: bool  # broaden to a seeing drawn from the set's stars (else keep the PSF width)
  max_shift_px: float  # sub-pixel shift ~ U(-this, this) per axis
  keep_bright_fraction: float  # this fraction of the batch keeps its own magnitude (augmented only)


def degrade(key, images, source_mag, source_noise, conditions: dict, options: DegradeOptions) -> jax.Array:
  """(B, 5, H, W) bright cutouts (nanomaggies) made to look like objects of the set's faint end (module docs).

  source_mag (B,): their r magnitudes; source_noise (B, 5): their background noise; `conditions`: the arrays of
  a `Conditions` as jax arrays (`conditions_arrays`). Each image gets: a target magnitude from the set's
  distribution above its own, a shrink factor, a seeing, a sub-pixel shift, the flux scaling, then noise that
  brings every pixel to the background noise of a random object of the set (with the set's power spectrum),
  then a random dihedral transform.
  """
  b = images.shape[0]
  keys = jax.random.split(key, 8)
  mags = conditions["r_mag_sorted"]
  n_mags = mags.shape[0]
  # Target magnitude: the set's distribution restricted to magnitudes at or beyond the source's.
  below = jnp.searchsorted(mags, source_mag)
  u = jax.random.uniform(keys[0], (b,))
  target_mag = mags[jnp.clip(below + jnp.floor(u * (n_mags - below)).astype(jnp.int32), 0, n_mags - 1)]
  keep = jax.random.bernoulli(keys[1], options.keep_bright_fraction, (b,))
  target_mag = jnp.where(keep, source_mag, jnp.maximum(target_mag, source_mag))
  dimming = target_mag - source_mag
  exponent = jax.random.uniform(keys[2], (b,), maxval=options.shrink_exponent_max)
  scale = jnp.clip(10.0 ** (0.2 * exponent * dimming), 1.0, options.max_scale)
  psf = conditions["psf_sigma"][None]
  seeing = conditions["seeing_sigma"][jax.random.randint(keys[3], (b,), 0, conditions["seeing_sigma"].shape[0])]
  dilation = jnp.maximum(seeing / psf, 1.0) if options.broaden else jnp.ones_like(seeing)
  shift = jax.random.uniform(keys[4], (b, 2), minval=-options.max_shift_px, maxval=options.max_shift_px)
  flux_scale = 10.0 ** (-0.4 * dimming)
  out = psf_matched_shrink(jnp.nan_to_num(images), scale, shift, dilation, conditions["psf_images"])
  out = out * flux_scale[:, None, None, None]
  # The source's own noise, scaled and resampled, is already there: add only what brings each pixel to target.
  # Its gain map is that of the Gaussian-PSF equivalent (`shrink_and_reconvolve`), close enough for a term that
  # is a small part of the target (the flux scale is small for all but the faintest sources).
  gain = gaussian_noise_gain(images.shape[-2:], scale, shift, restoring_blur(psf, scale[:, None], psf * dilation))
  target_noise = conditions["noise_sigma"][jax.random.randint(keys[5], (b,), 0, conditions["noise_sigma"].shape[0])]
  present = (flux_scale[:, None] * source_noise)[..., None, None] ** 2 * gain
  extra = jnp.sqrt(jnp.maximum(target_noise[..., None, None] ** 2 - present, 0.0))
  out = out + extra * coloured_noise(keys[6], conditions["noise_power"], out.shape)
  return dihedral(keys[7], out)


def augment(key, images, max_shift_px: float) -> jax.Array:
  """Dihedral transforms and sub-pixel shifts only (real cutouts of the set: the supervised reference, the
  student round)."""
  k_shift, k_dihedral = jax.random.split(key)
  b, c = images.shape[:2]
  shift = jax.random.uniform(k_shift, (b, 2), minval=-max_shift_px, maxval=max_shift_px)
  out, _ = shrink_and_reconvolve(jnp.nan_to_num(images), jnp.ones(b), shift, jnp.zeros((b, c)))
  return dihedral(k_dihedral, out)


def conditions_arrays(conditions: Conditions) -> dict:
  return {k: jnp.asarray(v, jnp.float32) for k, v in conditions._asdict().items()}


# ------------------------------------------------------------------------------------ measuring a set

def background_noise(images) -> np.ndarray:
  """(N, 5) per-band background noise of each cutout (1.4826 MAD at radius >= 24 px, `photometry`)."""
  return np.stack([photometry.prepare_band(images, b)[1] for b in range(np.shape(images)[1])], axis=1)


def star_sizes(images) -> np.ndarray:
  """(N, 5) per-band adaptive sigma sqrt(sqrt(det M)) (px) of each cutout's central object."""
  sizes = []
  for b in range(np.shape(images)[1]):
    _, _, moments = photometry.adaptive_moments(photometry.prepare_band(images, b)[0])
    with np.errstate(invalid="ignore"):  # unmeasurable objects have NaN moments, and stay NaN
      sizes.append(np.sqrt(np.sqrt(np.clip(np.linalg.det(moments), 1e-12, None))))
  return np.stack(sizes, axis=1)


def _unwrapped(height: int, width: int, dy: int, dx: int) -> np.ndarray:
  """(H, W) True where pixel (y + dy, x + dx) lies inside the cutout."""
  y, x = np.indices((height, width))
  return (y + dy >= 0) & (y + dy < height) & (x + dx >= 0) & (x + dx < width)


def noise_power_spectrum(images, noise_sigma: np.ndarray, max_lag: int = NOISE_CORRELATION_MAX_LAG) -> np.ndarray:
  """(5, H, W) noise power spectrum per band, mean 1: the Fourier transform of the background autocorrelation
  (lags up to `max_lag`, median over the cutouts, from pixel pairs at radius >= 24 px both within 4 sigma)."""
  n_images, n_bands, height, width = np.shape(images)
  radius = np.hypot(*np.meshgrid(np.arange(height) - height // 2, np.arange(width) - width // 2, indexing="ij"))
  outer = radius >= morphology.BACKGROUND_INNER_RADIUS_PX
  power = np.ones((n_bands, height, width))
  for b in range(n_bands):
    pixels = photometry.prepare_band(images, b)[0] / noise_sigma[:, b, None, None]
    usable = outer[None] & np.isfinite(pixels) & (np.abs(np.nan_to_num(pixels)) < NOISE_CLIP_SIGMA)
    pixels = np.where(usable, pixels, 0.0)
    acf = np.zeros((height, width))
    for dy in range(-max_lag, max_lag + 1):
      for dx in range(-max_lag, max_lag + 1):
        # np.roll wraps: pairs that straddle the cutout's edge are not neighbours.
        both = usable & np.roll(usable, (-dy, -dx), axis=(1, 2)) & _unwrapped(height, width, dy, dx)
        products = pixels * np.roll(pixels, (-dy, -dx), axis=(1, 2))
        counts = both.sum(axis=(1, 2))
        per_image = np.where(counts > 0, (products * both).sum(axis=(1, 2)) / np.maximum(counts, 1), np.nan)
        acf[dy % height, dx % width] = np.nanmedian(per_image) if np.isfinite(per_image).any() else float(dy == dx == 0)
    acf /= acf[0, 0]
    spectrum = np.clip(np.real(np.fft.fft2(acf)), 0.0, None)
    power[b] = spectrum / spectrum.mean()
  return power


def stacked_psf(star_images) -> np.ndarray:
  """(5, H, W) per-band unit-sum median stack of the stars, each recentred (`photometry.stack_psf`)."""
  indices = np.arange(len(star_images))
  return np.stack([photometry.stack_psf(star_images, indices, b) for b in range(np.shape(star_images)[1])])


def measure_conditions(r_mag: np.ndarray, noise_sigma: np.ndarray, star_images, noise_images=None,
                       correlated_noise: bool = True) -> Conditions:
  """A set's `Conditions`: its magnitudes and per-object noise (all objects), its seeing and stacked PSF from
  `star_images` (its bright point-like objects), and, when `correlated_noise`, its noise power spectrum from
  `noise_images` (a sample of its cutouts) rather than white noise."""
  finite = np.all(np.isfinite(noise_sigma) & (noise_sigma > 0), axis=1)
  sizes = star_sizes(star_images)
  sizes = sizes[np.all(np.isfinite(sizes), axis=1)]
  if len(sizes) == 0:
    raise ValueError("no star with a measurable size in any band: cannot measure the set's seeing")
  psf_images = stacked_psf(star_images)
  height, width = np.shape(star_images)[-2:]
  power = np.ones((N_BANDS, height, width))
  if correlated_noise and noise_images is not None:
    sample = np.asarray(noise_images)
    sample_sigma = background_noise(sample)
    keep = np.all(np.isfinite(sample_sigma) & (sample_sigma > 0), axis=1)
    power = noise_power_spectrum(sample[keep], sample_sigma[keep])
  return Conditions(np.sort(np.asarray(r_mag, np.float64)), np.asarray(noise_sigma[finite], np.float64),
                    star_sizes(psf_images[None])[0], sizes, power, psf_images)
