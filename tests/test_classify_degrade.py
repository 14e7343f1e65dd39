"""classify.degrade: the resampling map against numpy and GalSim, its noise gain against Monte Carlo, the
degradation's magnitudes and noise against independent estimates, the noise spectrum round trip, D4."""

import functools

import galsim
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from stargal_jax import morphology
from stargal_jax.classify import degrade

N = 64
PIXEL = 0.396
PSF_SIGMA_PX = 1.2 / 2.3548 / PIXEL  # 1.2" FWHM Gaussian

_shrink = jax.jit(degrade.shrink_and_reconvolve)


def _draw(obj, method="no_pixel"):
  # offset: GalSim centres an even-sized image between pixels; the project's objects sit on pixel (32, 32).
  return obj.drawImage(nx=N, ny=N, scale=PIXEL, method=method, offset=(0.5, 0.5)).array.astype(np.float64)


def _bands(image):
  return np.repeat(np.asarray(image, np.float32)[None, None], 5, axis=1)


def test_identity_integer_shift_and_blur_match_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, N, N)).astype(np.float32)
  out, _ = _shrink(x, np.ones(2), np.zeros((2, 2)), np.zeros((2, 5)))
  np.testing.assert_allclose(out, x, atol=5e-5)
  out, _ = _shrink(x, np.ones(2), np.array([[3.0, 0.0], [0.0, -2.0]]), np.zeros((2, 5)))
  np.testing.assert_allclose(out[0], np.roll(x[0], 3, axis=1), atol=5e-5)
  np.testing.assert_allclose(out[1], np.roll(x[1], -2, axis=2), atol=5e-5)
  # A Gaussian blur is the periodic image's DFT times exp(-sigma^2 w^2 / 2).
  sigma = np.array([[0.7, 1.0, 1.5, 2.0, 3.0]] * 2)
  out, _ = _shrink(x, np.ones(2), np.zeros((2, 2)), sigma)
  w = 2 * np.pi * np.fft.fftfreq(N)
  transfer = np.exp(-0.5 * sigma[..., None, None] ** 2 * (w[:, None] ** 2 + w[None, :] ** 2))
  reference = np.real(np.fft.ifft2(np.fft.fft2(x) * transfer))
  np.testing.assert_allclose(out, reference, atol=2e-4)


def test_shrink_keeps_a_galsim_star_and_shrinks_a_galsim_galaxy():
  psf = galsim.Gaussian(sigma=PSF_SIGMA_PX * PIXEL)
  galaxy = galsim.Exponential(half_light_radius=1.6)
  for scale in (1.5, 2.0, 3.0):
    source = np.concatenate([_bands(_draw(galsim.Convolve(galaxy, psf))), _bands(_draw(psf))])
    blur = np.full((2, 5), float(degrade.restoring_blur(PSF_SIGMA_PX, scale)))
    out, _ = _shrink(source, np.full(2, scale), np.zeros((2, 2)), blur)
    out = np.asarray(out)[:, 2]
    small_galaxy = _draw(galsim.Convolve(galsim.Exponential(half_light_radius=1.6 / scale), psf))
    star = _draw(psf)
    np.testing.assert_allclose(out[0], small_galaxy, atol=1e-3 * small_galaxy.max())
    np.testing.assert_allclose(out[1], star, atol=1e-3 * star.max())
    hlr = lambda a: galsim.Image(np.ascontiguousarray(a), scale=PIXEL).calculateHLR(
        center=galsim.PositionD(N // 2 + 1, N // 2 + 1))
    assert hlr(out[0]) == pytest.approx(hlr(small_galaxy), rel=0.01)
    assert hlr(out[0]) < hlr(source[0, 2]) / (0.8 * scale) ** 0.5  # the observed size did fall
    np.testing.assert_allclose(out.sum(axis=(1, 2)), source[:, 2].sum(axis=(1, 2)), rtol=1e-4)  # flux kept


def test_psf_matched_shrink_keeps_a_kolmogorov_star_and_shrinks_a_galaxy_seen_through_it():
  # A pixel-convolved Kolmogorov PSF is not Gaussian: the Gaussian restoring blur leaves a shrunk star ~3% wider
  # (checked below); deconvolving the shrunk PSF and reconvolving the PSF keeps it exactly.
  kolmogorov = galsim.Kolmogorov(fwhm=1.3)
  psf = _bands(_draw(kolmogorov, method="auto"))[0]
  galaxy = galsim.Exponential(half_light_radius=1.2)
  shrink = jax.jit(degrade.psf_matched_shrink)
  for scale in (1.5, 2.5, 4.0):
    source = np.concatenate([_bands(_draw(galsim.Convolve(galaxy, kolmogorov), method="auto")), psf[None]])
    out = np.asarray(shrink(source, np.full(2, scale), np.zeros((2, 2)), np.ones((2, 5)), psf))[:, 2]
    reference = _draw(galsim.Convolve(galsim.Exponential(half_light_radius=1.2 / scale), kolmogorov), method="auto")
    np.testing.assert_allclose(out[0], reference, atol=2e-3 * reference.max())
    np.testing.assert_allclose(out[1], psf[2], atol=2e-3 * psf[2].max())
  # Dilation: the same PSF in 20% worse seeing (a Kolmogorov PSF's shape does not change with the seeing).
  star = _bands(_draw(kolmogorov, method="no_pixel"))
  out = np.asarray(shrink(star, np.full(1, 2.0), np.zeros((1, 2)), np.full((1, 5), 1.2), star[0]))[0, 2]
  wider = _draw(galsim.Kolmogorov(fwhm=1.3 * 1.2), method="no_pixel")
  np.testing.assert_allclose(out, wider, atol=3e-3 * wider.max())
  # The Gaussian formula with the star's adaptive width, for comparison, makes it wider.
  size = degrade.star_sizes(psf[None].astype(np.float64))[0, 2]
  wide, _ = _shrink(psf[None], np.full(1, 2.0), np.zeros((1, 2)), np.full((1, 5), float(degrade.restoring_blur(size, 2.0))))
  assert degrade.star_sizes(np.asarray(wide, np.float64))[0, 2] > 1.015 * size


def test_noise_gain_matches_monte_carlo():
  rng = np.random.default_rng(1)
  noise = rng.normal(size=(600, 5, N, N)).astype(np.float32)
  scale, shift, blur = np.full(600, 2.2), np.tile([[0.3, -0.2]], (600, 1)), np.tile([[0.5, 1.0, 1.5, 2.0, 0.0]], (600, 1))
  out, gains = _shrink(noise, scale, shift, blur)
  expected = np.asarray(degrade.noise_gain(gains))[0]
  measured = np.var(np.asarray(out), axis=0)
  centre = slice(20, 44)
  np.testing.assert_allclose(measured[:, centre, centre].mean(axis=(1, 2)), expected[:, centre, centre].mean(axis=(1, 2)),
                             rtol=0.03)
  np.testing.assert_allclose(measured, expected, atol=0.25 * expected.max())


def _conditions(mags, noise, psf_sigma):
  return {"r_mag_sorted": jnp.asarray(np.sort(mags), jnp.float32), "noise_sigma": jnp.asarray(noise, jnp.float32),
          "psf_sigma": jnp.full(5, psf_sigma, jnp.float32), "seeing_sigma": jnp.full((1, 5), psf_sigma, jnp.float32),
          "noise_power": jnp.ones((5, N, N), jnp.float32),
          "psf_images": jnp.asarray(_bands(_draw(galsim.Gaussian(sigma=psf_sigma * PIXEL), method="auto"))[0])}


@pytest.mark.parametrize("shrink", [0.0, 1.0])
def test_degrade_gives_the_target_magnitude_and_noise(shrink):
  rng = np.random.default_rng(2)
  star = _draw(galsim.Gaussian(sigma=PSF_SIGMA_PX * PIXEL, flux=400.0), method="auto")  # 400 nmgy: r = 16
  source_mag = float(morphology.r_magnitude(_bands(star))[0])
  source_sigma = np.array([0.3, 0.1, 0.15, 0.2, 0.9])
  target_sigma = np.array([0.05, 0.02, 0.03, 0.04, 0.2])
  b = 64
  images = _bands(star) + rng.normal(size=(b, 5, N, N)) * source_sigma[None, :, None, None]
  conditions = _conditions(np.full(10, source_mag + 2.0), target_sigma[None], PSF_SIGMA_PX)
  options = degrade.DegradeOptions(shrink, 4.0, False, 0.5, 0.0)
  fn = jax.jit(functools.partial(degrade.degrade, options=options))
  out = np.asarray(fn(jax.random.key(0), jnp.asarray(images, jnp.float32), jnp.full(b, source_mag),
                      jnp.tile(jnp.asarray(source_sigma, jnp.float32), (b, 1)), conditions))
  # The source's own noise, scaled by 10^(-0.8) = 0.16, is 0.05-0.14 of the target: without subtracting it the
  # total would be 0.1-1% high in variance in the centre; the plain standard deviation (not the MAD) is checked.
  outskirts = np.hypot(*np.meshgrid(np.arange(N) - 32, np.arange(N) - 32, indexing="ij")) >= 20
  np.testing.assert_allclose(out[:, :, outskirts].std(axis=(0, 2)), target_sigma, rtol=0.02)
  noise_only = np.asarray(fn(jax.random.key(1), jnp.asarray(images - _bands(star), jnp.float32),
                             jnp.full(b, source_mag), jnp.tile(jnp.asarray(source_sigma, jnp.float32), (b, 1)),
                             conditions))
  np.testing.assert_allclose(noise_only[:, :, 24:40, 24:40].std(axis=(0, 2, 3)), target_sigma, rtol=0.03)
  flux = morphology.aperture_flux(out, morphology.PETROSIAN_LIKE_RADIUS_PX)
  assert morphology.flux_to_magnitude(flux.mean()) == pytest.approx(source_mag + 2.0, abs=0.02)


def test_degrade_is_deterministic_given_the_key():
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.normal(size=(4, 5, N, N)), jnp.float32)
  conditions = _conditions(np.linspace(18, 22, 50), np.full((3, 5), 0.05), PSF_SIGMA_PX)
  options = degrade.DegradeOptions(1.0, 4.0, True, 0.5, 0.1)
  fn = jax.jit(functools.partial(degrade.degrade, options=options))
  args = (images, jnp.full(4, 17.0), jnp.full((4, 5), 0.05), conditions)
  np.testing.assert_array_equal(fn(jax.random.key(5), *args), fn(jax.random.key(5), *args))
  assert np.abs(np.asarray(fn(jax.random.key(5), *args)) - np.asarray(fn(jax.random.key(6), *args))).max() > 1e-3


def test_noise_power_spectrum_recovers_a_correlation_and_coloured_noise_reproduces_it():
  rng = np.random.default_rng(4)
  kernel = np.array([[0.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 0.0]])  # resampling-like correlation
  white = rng.normal(size=(300, 5, N, N))
  correlated = ndimage.convolve(white, kernel[None, None], mode="wrap")
  padded = np.zeros((N, N))
  padded[:3, :3] = kernel
  truth = np.abs(np.fft.fft2(np.roll(padded, (-1, -1), axis=(0, 1)))) ** 2
  truth /= truth.mean()
  sigma = degrade.background_noise(correlated)
  power = degrade.noise_power_spectrum(correlated, sigma)
  np.testing.assert_allclose(power, np.broadcast_to(truth, power.shape), atol=0.08)
  # White noise gives a flat spectrum.
  flat = degrade.noise_power_spectrum(white, degrade.background_noise(white))
  np.testing.assert_allclose(flat, 1.0, atol=0.08)
  # coloured_noise with that spectrum has unit variance and the kernel's lag-1 correlation (0.5 * 2 * 1 / 2.0).
  sample = np.asarray(jax.jit(degrade.coloured_noise, static_argnums=2)(jax.random.key(0), truth[None].repeat(5, 0),
                                                                      (200, 5, N, N)))
  assert sample.var() == pytest.approx(1.0, rel=0.02)
  lag1 = np.mean(sample * np.roll(sample, 1, axis=-1)) / sample.var()
  expected = np.sum(kernel[:, 1:] * kernel[:, :-1]) / np.sum(kernel ** 2)
  assert lag1 == pytest.approx(expected, abs=0.01)


def test_dihedral_gives_the_eight_group_elements():
  x = jnp.asarray(np.random.default_rng(5).normal(size=(64, 1, 5, 5)), jnp.float32)
  x = jnp.broadcast_to(x[:1], x.shape)
  out = np.asarray(jax.jit(degrade.dihedral)(jax.random.key(0), x))
  base = np.asarray(x[0, 0])
  group = [np.rot90(f(base), k) for f in (lambda a: a, lambda a: a[:, ::-1]) for k in range(4)]
  found = [next(i for i, g in enumerate(group) if np.allclose(o[0], g)) for o in out]
  assert set(found) == set(range(8))
