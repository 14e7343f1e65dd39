"""Normalisers: statistics against direct numpy/scipy computations; numpy, jax and jit agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from stargal_jax.data import formats, normalize, store


def _heavy_tailed_images(n=40, seed=0):
  """Gaussian sky noise of a different width per band, plus a few very bright pixels."""
  rng = np.random.default_rng(seed)
  sigma = np.array([0.3, 0.05, 0.04, 0.06, 0.2])[None, :, None, None]
  images = rng.standard_normal((n, 5, 16, 16)) * sigma + 0.01
  images[:, :, 7:9, 7:9] += rng.pareto(1.5, (n, 5, 1, 1)) * 50
  return images.astype(np.float32)


def _band_pixels(images, band):
  return images[:, band].astype(np.float64).ravel()


def test_zscore_statistics_match_direct_computation():
  images = _heavy_tailed_images()
  params = normalize.fit_normalizer(images, "zscore")
  for b in range(5):
    pixels = _band_pixels(images, b)
    assert params["center"][b] == pytest.approx(np.median(pixels), rel=1e-12)
    mad = scipy.stats.median_abs_deviation(pixels, scale=1.0)
    assert params["scale"][b] == pytest.approx(1.4826 * mad, rel=1e-12)
  out = normalize.normalize(params, images)
  assert out.dtype == np.float32
  for b in range(5):  # sky pixels become unit-width noise
    assert np.median(out[:, b]) == pytest.approx(0.0, abs=1e-5)
    assert 1.4826 * scipy.stats.median_abs_deviation(out[:, b].ravel()) == pytest.approx(1.0, rel=1e-4)
  expected = (images - np.array(params["center"])[:, None, None]) / np.array(params["scale"])[:, None, None]
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_asinh_statistics_match_direct_computation():
  images = _heavy_tailed_images()
  params = normalize.fit_normalizer(images, "asinh")
  for b in range(5):
    pixels = _band_pixels(images, b)
    softening = 1.4826 * scipy.stats.median_abs_deviation(pixels, scale=1.0)
    assert params["softening"][b] == pytest.approx(softening, rel=1e-12)
    y = np.arcsinh(pixels / (2 * softening))
    assert params["center"][b] == pytest.approx(np.median(y), rel=1e-12)
    assert params["scale"][b] == pytest.approx(1.4826 * scipy.stats.median_abs_deviation(y, scale=1.0), rel=1e-12)
  out = normalize.normalize(params, images)
  assert np.abs(out).max() < 30 < np.abs(normalize.normalize(normalize.fit_normalizer(images, "zscore"), images)).max()


def test_asinh_with_sdss_softening():
  images = _heavy_tailed_images()
  params = normalize.fit_normalizer(images, "asinh", softening=normalize.SDSS_SOFTENING_NANOMAGGIES)
  assert params["softening"] == list(normalize.SDSS_SOFTENING_NANOMAGGIES)
  y = np.arcsinh(_band_pixels(images, 4) / (2 * 0.74))
  assert params["center"][4] == pytest.approx(np.median(y), rel=1e-12)


def test_max_images_takes_a_fixed_sample():
  images = _heavy_tailed_images(n=50)
  params = normalize.fit_normalizer(images, "zscore", max_images=10, seed=4)
  chosen = np.sort(np.random.default_rng(4).choice(50, 10, replace=False))
  assert params["n_images"] == 10
  assert params["center"][2] == pytest.approx(np.median(_band_pixels(images[chosen], 2)), rel=1e-12)
  assert params == normalize.fit_normalizer(images, "zscore", max_images=10, seed=4)


def test_fit_on_a_packed_store_equals_fit_on_its_images(tmp_path):
  images = np.random.default_rng(1).standard_normal((6,) + formats.IMAGE_SHAPE).astype(np.float32)
  formats.write_unlabelled(tmp_path / "u.npy", images)
  packed = store.pack_store(tmp_path, "unlabelled", tmp_path / "cache")
  assert normalize.fit_normalizer(packed, "asinh", max_images=4) == normalize.fit_normalizer(images, "asinh", max_images=4)


@pytest.mark.parametrize("method", sorted(normalize.NORMALIZERS))
def test_numpy_jax_and_jit_agree(method):
  images = _heavy_tailed_images(n=4)
  params = normalize.fit_normalizer(images, method)
  expected = normalize.normalize(params, images)
  eager = normalize.normalize(params, jnp.asarray(images))
  jitted = jax.jit(lambda x: normalize.normalize(params, x))(jnp.asarray(images))
  assert isinstance(eager, jax.Array) and eager.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(eager), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(jitted), expected, rtol=1e-5, atol=1e-5)
  single = normalize.normalize(params, images[0])  # (5, H, W): band axis is -3
  np.testing.assert_allclose(single, expected[0], rtol=1e-6)


def test_save_load_round_trip_and_validation(tmp_path):
  params = normalize.fit_normalizer(_heavy_tailed_images(), "asinh")
  path = tmp_path / "normalizer.json"
  normalize.save_normalizer(path, params)
  assert normalize.load_normalizer(path) == params
  broken = dict(params, scale=params["scale"][:4])
  with pytest.raises(ValueError, match="'scale' must be a list of 5"):
    normalize.save_normalizer(path, broken)


def test_unknown_method_lists_valid_names_and_constant_band_fails():
  images = _heavy_tailed_images()
  with pytest.raises(ValueError, match=r"\['asinh', 'asinh_shape', 'zscore'\]"):
    normalize.fit_normalizer(images, "minmax")
  images[:, 3] = 0.0
  with pytest.raises(ValueError, match="band i"):
    normalize.fit_normalizer(images, "zscore")
  with pytest.raises(ValueError, match="expected images"):
    normalize.normalize(normalize.fit_normalizer(_heavy_tailed_images(), "zscore"), np.zeros((2, 4, 8, 8)))


def _objects_of_many_fluxes(n=30, seed=4):
  """Sky noise plus a centred Gaussian object per cutout, fluxes spread over four decades."""
  rng = np.random.default_rng(seed)
  images = rng.normal(0.0, 0.02, (n, 5, 32, 32))
  yy, xx = np.mgrid[:32, :32]
  profile = np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / (2 * 1.5 ** 2))
  flux = 10 ** rng.uniform(-1, 3, n)
  colours = rng.uniform(0.5, 2.0, (n, 5))
  images += (flux[:, None] * colours)[:, :, None, None] * profile / profile.sum()
  return images.astype(np.float32)


def test_asinh_shape_matches_the_direct_formula():
  images = _objects_of_many_fluxes()
  params = normalize.fit_normalizer(images, "asinh_shape")
  x = images.astype(np.float64)
  inside = np.hypot(*(np.mgrid[:32, :32] - 16)) <= normalize.SHAPE_FLUX_RADIUS_PX
  noise = [1.4826 * scipy.stats.median_abs_deviation(x[:, b].ravel()) for b in range(5)]
  floor = 3.0 * noise[2] * np.sqrt(inside.sum())
  flux = np.maximum((x[:, 2] * inside).sum(axis=(1, 2)), floor)
  assert params["flux_floor"][0] == pytest.approx(floor, rel=1e-9)
  for b in range(5):
    softening = np.median(noise[b] / flux)
    assert params["softening"][b] == pytest.approx(softening, rel=1e-9)
    y = np.arcsinh(x[:, b] / flux[:, None, None] / (2 * softening))
    assert params["center"][b] == pytest.approx(np.median(y), rel=1e-9, abs=1e-12)
    assert params["scale"][b] == pytest.approx(1.4826 * scipy.stats.median_abs_deviation(y.ravel()), rel=1e-9)
    expected = (y - params["center"][b]) / params["scale"][b]
    np.testing.assert_allclose(normalize.normalize(params, images)[:, b], expected, rtol=2e-4, atol=2e-4)
  # jax under jit agrees with numpy
  out = jax.jit(lambda z: normalize.normalize(params, z))(jnp.asarray(images))
  np.testing.assert_allclose(np.asarray(out), normalize.normalize(params, images), rtol=1e-5, atol=1e-5)


def test_asinh_shape_separates_shape_from_flux():
  """The same object at 100 times the flux and without noise normalises to the same image."""
  images = _objects_of_many_fluxes()
  params = normalize.fit_normalizer(images, "asinh_shape")
  yy, xx = np.mgrid[:32, :32]
  shape = np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / 8.0)[None, None] * np.ones((1, 5, 1, 1))
  faint, bright = (shape * 5.0).astype(np.float32), (shape * 500.0).astype(np.float32)
  np.testing.assert_allclose(normalize.normalize(params, faint), normalize.normalize(params, bright), rtol=1e-5,
                             atol=1e-6)
  zscored = normalize.fit_normalizer(images, "asinh")
  assert not np.allclose(normalize.normalize(zscored, faint), normalize.normalize(zscored, bright))
