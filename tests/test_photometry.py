"""Tests for stargal_jax.photometry against independent computations.

Profiles: the Gaussian mixtures against the analytic Sersic profiles by quadrature. Fits: galaxies and point
sources rendered by GalSim (an independent renderer: Fourier-space Sersic x Kolmogorov, pixel-convolved), so
the fits must recover GalSim's flux and half-light radius. The extension significance: its stated N(0, 1) null
by Monte Carlo. Compilation: jit against eager, a batch against one-by-one calls.
"""

import math

import galsim
import jax
import numpy as np
import pytest
from scipy import optimize

from stargal_jax import PIXEL_SCALE_ARCSEC, photometry
from stargal_jax.photometry import fitting

SIZE = 64
PSF_FWHM_ARCSEC = 1.3


def draw(profile: galsim.GSObject, dy: float = 0.0, dx: float = 0.0) -> np.ndarray:
  """GalSim image with the object at array (32 + dy, 32 + dx): GalSim's true centre of an even stamp is
  half a pixel below and left of pixel 32."""
  return profile.drawImage(nx=SIZE, ny=SIZE, scale=PIXEL_SCALE_ARCSEC, method="auto",
                           offset=(0.5 + dx, 0.5 + dy)).array.astype(np.float64)


def five_bands(stamps: np.ndarray) -> np.ndarray:
  return np.repeat(np.asarray(stamps)[:, None], 5, axis=1)


@pytest.fixture(scope="module")
def kolmogorov():
  psf = galsim.Kolmogorov(fwhm=PSF_FWHM_ARCSEC)
  return psf, photometry.psf_mixture_from_images(draw(psf))


def test_exp_mixture_matches_analytic_profile():
  r = np.geomspace(0.05, 8.0, 40)
  exact = photometry.sersic_enclosed(r, 1) / photometry.sersic_enclosed(40.0, 1)[0]
  np.testing.assert_allclose(photometry.mixture_enclosed(photometry.EXP_MIXTURE, r), exact, atol=2e-4)
  half = optimize.brentq(lambda x: photometry.mixture_enclosed(photometry.EXP_MIXTURE, x)[0] - 0.5, 0.1, 5)
  assert half == pytest.approx(1.0, abs=1e-3)  # r_e is the half-light radius by definition
  assert sum(photometry.EXP_MIXTURE.amplitudes) == pytest.approx(1.0, abs=1e-9)


def test_dev_mixture_matches_truncated_analytic_profile():
  truncation = photometry.DEV_TRUNCATION
  r = np.geomspace(0.05, 8.0, 40)
  total = photometry.sersic_enclosed(8.0, 4, truncation)[0]
  exact = photometry.sersic_enclosed(r, 4, truncation) / total
  mixture = photometry.mixture_enclosed(photometry.DEV_MIXTURE, r)
  np.testing.assert_allclose(mixture, exact, atol=6e-3)
  exact_half = optimize.brentq(lambda x: photometry.sersic_enclosed(x, 4, truncation)[0] / total - 0.5, 0.3, 3)
  mixture_half = optimize.brentq(lambda x: photometry.mixture_enclosed(photometry.DEV_MIXTURE, x)[0] - 0.5, 0.1, 5)
  assert mixture_half == pytest.approx(exact_half, rel=0.01)
  # Surface brightness within 15% over 0.1 - 6 r_e (the core cusp below is far inside any SDSS PSF).
  radii = np.geomspace(0.1, 6.0, 30)
  np.testing.assert_allclose(photometry.mixture_profile(photometry.DEV_MIXTURE, radii),
                             photometry.sersic_profile(radii, 4, truncation) / total, rtol=0.15)


def test_sersic_b_matches_known_values():
  # Ciotti & Bertin 1999 asymptotic series: b_n ~ 2n - 1/3 + 4 / (405 n) + 46 / (25515 n^2).
  series = lambda n: 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n ** 2)
  assert photometry.sersic_b(1) == pytest.approx(1.678347, abs=1e-5)
  assert photometry.sersic_b(4) == pytest.approx(series(4), abs=5e-6)


def test_psf_mixture_reproduces_galsim_psf(kolmogorov):
  psf, mixture = kolmogorov
  image = draw(psf)
  model = photometry.mixture_image(mixture)
  r = np.hypot(*(np.indices((SIZE, SIZE)) - SIZE // 2))
  for radius in (2.0, 4.0, 8.0):
    assert model[r <= radius].sum() == pytest.approx(image[r <= radius].sum(), abs=0.01)
  # A Kolmogorov profile's FWHM is its size parameter (drawn at 0.396"/px, pixel-convolved: a bit wider).
  assert photometry.mixture_fwhm_px(mixture) == pytest.approx(PSF_FWHM_ARCSEC / PIXEL_SCALE_ARCSEC, rel=0.06)


@pytest.fixture(scope="module")
def galsim_galaxies(kolmogorov):
  """Noiseless GalSim exp and deV galaxies x Kolmogorov, random shapes and sub-pixel centres, and stars."""
  psf, mixture = kolmogorov
  rng = np.random.default_rng(0)
  stamps, truth = [], []
  for kind in ("exp", "dev", "star") * 3:
    flux = 10 ** rng.uniform(2, 3)
    if kind == "exp":
      r_e = rng.uniform(0.8, 2.0)  # arcsec: 2 - 5 px, i.e. 0.6 - 1.5 x the PSF FWHM
      galaxy = galsim.Exponential(half_light_radius=r_e, flux=flux)
    elif kind == "dev":
      r_e = rng.uniform(0.8, 1.5)
      # SDSS truncates deV at 8 r_e; flux_untruncated keeps r_e the untruncated profile's (as ours).
      galaxy = galsim.DeVaucouleurs(half_light_radius=r_e, flux=flux, trunc=8 * r_e, flux_untruncated=True)
    else:
      r_e, galaxy = 0.0, galsim.DeltaFunction(flux=flux)
    if kind != "star":
      # A sheared profile keeps its area: the circularised half-light radius sqrt(ab) stays r_e.
      galaxy = galaxy.shear(q=rng.uniform(0.5, 1.0), beta=rng.uniform(0, np.pi) * galsim.radians)
    stamps.append(draw(galsim.Convolve(galaxy, psf), *rng.uniform(-0.5, 0.5, 2)))
    truth.append((kind, galaxy.flux, r_e / PIXEL_SCALE_ARCSEC))
  images = five_bands(stamps) + np.random.default_rng(1).normal(0, 1e-4, (len(stamps), 5, SIZE, SIZE))
  return images, truth, photometry.fit_models(images, mixture)


def test_fits_recover_galsim_flux_and_radius(galsim_galaxies):
  _, truth, fits = galsim_galaxies
  for i, (kind, flux, r_e_px) in enumerate(truth):
    if kind == "exp":
      assert fits.exp_flux[i] == pytest.approx(flux, rel=0.015)
      assert fits.exp_radius_px[i] == pytest.approx(r_e_px, rel=0.02)
      assert fits.frac_dev[i] < 0.1
    elif kind == "dev":
      assert fits.dev_flux[i] == pytest.approx(flux, rel=0.025)
      assert fits.dev_radius_px[i] == pytest.approx(r_e_px, rel=0.03)
      assert fits.frac_dev[i] > 0.9
    else:
      assert fits.psf_flux[i] == pytest.approx(flux, rel=0.01)
    assert fits.cmodel_flux[i] == pytest.approx(flux, rel=0.025)


def test_sdss_criterion_on_galsim_points_and_galaxies(galsim_galaxies):
  _, truth, fits = galsim_galaxies
  difference = photometry.psf_minus_cmodel(fits)
  kinds = np.array([kind for kind, _, _ in truth])
  assert np.abs(difference[kinds == "star"]).max() < 0.03
  assert difference[kinds != "star"].min() > photometry.SDSS_EXTENDED_CUT_MAG


def test_noisy_galsim_points_sit_on_the_locus(kolmogorov):
  psf, mixture = kolmogorov
  rng = np.random.default_rng(2)
  star = draw(psf)
  sigma = 0.02  # r = 18 (16 nanomaggies): S/N ~ 16 / (0.02 x sqrt(4 pi 1.4^2)) ~ 160
  stamps = [15.85 * draw(psf, *rng.uniform(-0.5, 0.5, 2)) + rng.normal(0, sigma, star.shape) for _ in range(40)]
  difference = photometry.psf_minus_cmodel(photometry.fit_models(five_bands(stamps), mixture))
  # Extended models can only fit noise better than the PSF, so the locus sits slightly above 0.
  assert abs(np.median(difference)) < 0.02
  assert np.quantile(difference, 0.9) < photometry.SDSS_EXTENDED_CUT_MAG


@pytest.mark.parametrize("snr", [20.0, 50.0, 200.0])
def test_significances_have_their_stated_null_for_point_sources(snr):
  # Point sources drawn with the fitting PSF itself, white noise of known sigma; seeds other than those of the
  # Monte Carlo that set NULL_OFFSET and NULL_SCALE.
  mixture = photometry.GaussianMixture(np.array([0.7, 0.25, 0.05]),
                                       np.array([2.2 * np.eye(2), [[5.0, 0.4], [0.4, 6.0]], 25.0 * np.eye(2)]))
  psf = photometry.mixture_image(mixture)
  sigma = 0.01
  flux = snr * sigma / math.sqrt((psf ** 2).sum())  # matched-filter S/N
  rng = np.random.default_rng(1000 + int(snr))
  n = 240
  stamps = flux * psf[None] + rng.normal(0, sigma, (n, SIZE, SIZE))
  fits = photometry.fit_models(five_bands(stamps), mixture, mask_neighbours=False)
  # The linear test: exactly N(0, 1); Monte Carlo standard errors 0.065 (mean) and 0.046 (std).
  z = photometry.extension_significance(fits)
  assert abs(np.mean(z)) < 0.25
  assert np.std(z) == pytest.approx(1.0, abs=0.15)
  # The psf - cModel significance (no locus floor): median ~0, robust spread ~1.
  t = photometry.psf_cmodel_significance(fits)
  assert abs(np.median(t)) < 0.3
  assert 1.4826 * np.median(np.abs(t - np.median(t))) == pytest.approx(1.0, abs=0.3)
  # The sigma_m it uses is the PSF-flux noise of a point source, with the noise measured per cutout (MAD of
  # ~1,000 outer pixels: a few % scatter): its median against the closed form sigma / sqrt(sum P^2).
  box = slice(SIZE // 2 - photometry.FIT_BOX // 2, SIZE // 2 + photometry.FIT_BOX // 2)
  expected = sigma / math.sqrt((psf[box, box] ** 2).sum())
  assert np.median(fits.psf_flux_err) == pytest.approx(expected, rel=0.02)


def test_extension_significance_grows_with_size_and_snr():
  mixture = photometry.gaussian_psf_mixture(3.5)
  psf_sigma2 = (3.5 / photometry.GAUSSIAN_FWHM_PER_SIGMA) ** 2
  y, x = np.indices((SIZE, SIZE)) - SIZE // 2
  gaussian = lambda var: np.exp(-0.5 * (y ** 2 + x ** 2) / var) / (2 * np.pi * var)
  stamps = [f * gaussian(psf_sigma2 + s2) for f in (50.0, 500.0) for s2 in (0.0, 0.3, 1.0)]
  noise = np.random.default_rng(3).normal(0, 0.01, (6, 5, SIZE, SIZE))
  fits = photometry.fit_models(five_bands(stamps) + noise, mixture)
  z = photometry.extension_significance(fits).reshape(2, 3)
  assert np.all(np.diff(z, axis=1) > 0) and np.all(z[1, 1:] > z[0, 1:])
  # Brute-force reference: least squares of the noiseless image on [P, dP/ds^2] in the fit box, the
  # derivative by a central finite difference of the Gaussian's variance.
  box = slice(SIZE // 2 - photometry.FIT_BOX // 2, SIZE // 2 + photometry.FIT_BOX // 2)
  h = 1e-3
  design = np.stack([gaussian(psf_sigma2)[box, box].ravel(),
                     ((gaussian(psf_sigma2 + h) - gaussian(psf_sigma2 - h)) / (2 * h))[box, box].ravel()], 1)
  for index, s2 in ((4, 0.3), (5, 1.0)):
    (flux, amplitude), *_ = np.linalg.lstsq(design, stamps[index][box, box].ravel(), rcond=None)
    assert fits.extension_variance_px2[index] == pytest.approx(amplitude / flux, rel=0.05)


@pytest.mark.slow  # eager mode dispatches every operation from Python: ~30 s
def test_batch_equals_single_and_jit_equals_eager(galsim_galaxies, kolmogorov, monkeypatch):
  images, _, fits = galsim_galaxies
  _, mixture = kolmogorov
  single = [photometry.fit_models(images[i:i + 1], mixture) for i in (0, 4, 8)]
  for field in ("psf_flux", "cmodel_flux", "dev_radius_px", "extension_z"):
    np.testing.assert_allclose([getattr(s, field)[0] for s in single], getattr(fits, field)[[0, 4, 8]],
                               rtol=1e-5)
  pixels, sigma = photometry.prepare_band(images[:1], 2)
  fit_box = photometry.FIT_BOX
  rows = slice(SIZE // 2 - fit_box // 2, SIZE // 2 + fit_box // 2)
  data = (pixels[0, rows, rows] / sigma[0]).ravel().astype(np.float32)
  weight = np.ones_like(data)
  # Eager execution dispatches every operation from Python: a shorter fit (1 LM step each, 1 start) keeps it fast.
  monkeypatch.setattr(fitting, "N_LM_STEPS", 1)
  monkeypatch.setattr(fitting, "N_PSF_LM_STEPS", 1)
  monkeypatch.setattr(fitting, "START_RADII_PX", (2.0,))
  fn = fitting.compiled_fit.__wrapped__(SIZE, SIZE, fit_box)
  args = (data[None], weight[None], np.asarray(mixture.amplitudes, np.float32)[None],
          np.asarray(mixture.covariances, np.float32)[None])
  jitted = fn(*args)
  with jax.disable_jit():
    eager = fn(*args)
  for key in ("psf_flux", "cmodel_flux", "dev_radius_px", "exp_radius_px", "extension_z"):
    np.testing.assert_allclose(np.asarray(eager[key]), np.asarray(jitted[key]), rtol=2e-4, err_msg=key)


def test_per_object_psf_equals_shared(galsim_galaxies, kolmogorov):
  images, _, fits = galsim_galaxies
  _, mixture = kolmogorov
  n = len(images)
  per_object = photometry.GaussianMixture(np.repeat(mixture.amplitudes[None], n, 0),
                                          np.repeat(mixture.covariances[None], n, 0))
  np.testing.assert_allclose(photometry.fit_models(images, per_object).cmodel_flux, fits.cmodel_flux, rtol=1e-6)
  with pytest.raises(ValueError, match="per object"):
    photometry.fit_models(images, photometry.GaussianMixture(per_object.amplitudes[:2], per_object.covariances[:2]))


def test_estimated_psf_from_a_set_matches_the_truth(kolmogorov):
  psf, mixture = kolmogorov
  rng = np.random.default_rng(4)
  stamps = []
  for i in range(40):
    flux = 10 ** rng.uniform(1.5, 3)
    source = galsim.DeltaFunction(flux=flux) if i % 2 else galsim.Exponential(
        half_light_radius=rng.uniform(0.8, 2.0), flux=flux)
    stamps.append(draw(galsim.Convolve(source, psf), *rng.uniform(-0.5, 0.5, 2)))
  images = five_bands(stamps) + rng.normal(0, 0.005, (40, 5, SIZE, SIZE))
  model = photometry.estimate_psf_model(images, bright_fraction=1.0)
  assert model.n_stars >= 10 and np.all(model.star_indices % 2 == 1)  # only the point sources
  np.testing.assert_allclose(model.image, draw(psf) / draw(psf).sum(), atol=2e-3)
  assert model.fwhm_px == pytest.approx(photometry.mixture_fwhm_px(mixture), rel=0.03)
  criteria = photometry.sdss_criteria(images)
  assert np.abs(criteria["psf_minus_cmodel"][1::2]).max() < 0.05
  assert criteria["psf_minus_cmodel"][0::2].min() > photometry.SDSS_EXTENDED_CUT_MAG


def test_nan_pixels_and_empty_cutouts(galsim_galaxies, kolmogorov):
  images, _, fits = galsim_galaxies
  _, mixture = kolmogorov
  holed = images.copy()
  holed[:, :, 30, 33] = np.nan
  holed[:, :, 0, :] = np.nan
  empty = np.full((1, 5, SIZE, SIZE), np.nan)
  out = photometry.fit_models(np.concatenate([holed, empty]), mixture)
  np.testing.assert_allclose(out.cmodel_flux[:-1], fits.cmodel_flux, rtol=0.01)
  assert np.isnan(out.cmodel_flux[-1]) and np.isnan(photometry.psf_minus_cmodel(out)[-1])
