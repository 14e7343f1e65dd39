"""classify.scoring: every score method is the manifold routine it names; orientation and threshold by hand;
the chunked image measurements equal the morphology functions on the whole set."""

import ml_collections
import numpy as np
import pytest

from stargal_jax import morphology, registry
from stargal_jax.classify import manifold, scoring


def _score_config(method, unit=0):
  return ml_collections.ConfigDict(dict(method=method, unit=unit, n_neighbors=10, fit_size=150))


def _latents(n=200, seed=0):
  rng = np.random.default_rng(seed)
  galaxy = rng.random(n) < 0.7
  latents = np.c_[rng.normal(size=n) + 2.5 * galaxy, rng.normal(size=n)]
  return latents, galaxy, {"r_mag": rng.uniform(16, 22, n), "extendedness": latents[:, 0] + 0.3 * rng.normal(size=n)}


def test_every_score_method_is_the_routine_it_names():
  latents, _, measurements = _latents()
  assert set(scoring.SCORE_METHODS) == {"latent_unit", "uncorrelated_with_magnitude", *manifold.EMBEDDINGS,
                                        *manifold.CLUSTERERS}
  np.testing.assert_array_equal(scoring.raw_score(latents, _score_config("latent_unit", 1), 0, measurements),
                                latents[:, 1])
  np.testing.assert_array_equal(
      scoring.raw_score(latents, _score_config("uncorrelated_with_magnitude"), 3, measurements),
      manifold.uncorrelated_with(latents, measurements["r_mag"], seed=3))
  for method in manifold.EMBEDDINGS:
    np.testing.assert_array_equal(scoring.raw_score(latents, _score_config(method), 2, measurements),
                                  manifold.embed_1d(latents, method, n_neighbors=10, fit_size=150, seed=2))
  for method in manifold.CLUSTERERS:
    np.testing.assert_array_equal(scoring.raw_score(latents, _score_config(method), 1, measurements),
                                  manifold.cluster_2(latents, method=method, seed=1)[1])
  with pytest.raises(registry.UnknownName, match="latent_unit"):
    scoring.raw_score(latents, _score_config("umap"), 0, measurements)


def test_orientation_and_prior_threshold_by_hand():
  latents, galaxy, measurements = _latents(seed=1)
  raw = -latents[:, 0]  # anti-aligned with the extendedness: must be flipped, without labels
  out = scoring.orient_and_threshold(raw, measurements, star_fraction=0.3)
  assert out["orientation_sign"] == -1
  np.testing.assert_allclose(out["score"], latents[:, 0])
  threshold = np.sort(latents[:, 0])[int(round(0.3 * (len(raw) - 1)))]  # numpy's linear quantile, here a node
  assert out["threshold"] == pytest.approx(np.quantile(latents[:, 0], 0.3)) and abs(out["threshold"] - threshold) < 0.1
  assert np.mean(out["pred"] == 0) == pytest.approx(0.3, abs=1 / len(raw))
  np.testing.assert_array_equal(out["pred"], (out["score"] > out["threshold"]).astype(out["pred"].dtype))
  config = ml_collections.ConfigDict(dict(score=_score_config("latent_unit", 0), data=dict(star_fraction=0.3)))
  same = scoring.score_latents(-latents, measurements, config, seed=0)
  np.testing.assert_array_equal(same["pred"], out["pred"])


def _measurement_source(n=20, seed=2):
  rng = np.random.default_rng(seed)
  images = rng.normal(0.0, 0.05, (n, 5, 64, 64)).astype(np.float32)
  yy, xx = np.mgrid[:64, :64]
  images[:, :, :, :] += (np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / (2 * rng.uniform(1, 4, n) ** 2)[:, None, None])
                         )[:, None].astype(np.float32)

  class Source:  # the store interface: len and read(indices)
    def __len__(self):
      return len(images)

    def read(self, idx):
      return images[idx]

  return images, Source()


def test_image_measurements_estimate_the_psf_once_per_set():
  """The PSF, the stellar locus and the median fill are the set's: any chunking gives the same numbers, equal to
  the morphology functions called once on the whole set with that PSF."""
  images, source = _measurement_source()
  psf = scoring.estimate_set_psf(source)
  # The matched-filter width and aperture correction: morphology's own estimate on the whole set (the bright
  # subset is chosen by the same rule over the set, here read in chunks).
  direct = morphology.estimate_psf(images)
  assert psf.fwhm_px == pytest.approx(direct.fwhm_px) and psf.aperture_correction_mag == pytest.approx(
      direct.aperture_correction_mag)
  chunked = scoring.image_measurements(source, chunk=7, psf=psf)
  whole = scoring.image_measurements(source, chunk=20, psf=psf)
  for key in whole:
    np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-6, atol=1e-9, err_msg=key)
  np.testing.assert_allclose(whole["r_mag"], morphology.r_magnitude(images))
  np.testing.assert_allclose(whole["extendedness"], morphology.extendedness(images, psf.fwhm_px,
                                                                            psf.aperture_correction_mag))
  reference = morphology.classical_baseline_scores(images, psf.fwhm_px, psf.aperture_correction_mag, psf=psf.mixture)
  for name, values in reference.items():
    np.testing.assert_allclose(whole[f"baseline_{name}"], values, rtol=1e-6, atol=1e-9, err_msg=name)
  estimated = scoring.image_measurements(source, chunk=7)  # the PSF estimated inside, once
  np.testing.assert_allclose(estimated["baseline_sdss_psf_minus_cmodel"], whole["baseline_sdss_psf_minus_cmodel"])


def test_bright_subset_is_the_brightest_fraction_thinned():
  images, source = _measurement_source(n=40, seed=3)
  flux = morphology.aperture_flux(images, 5.0)
  chosen = scoring.bright_subset(source, chunk=9, bright_fraction=0.5, max_objects=10)
  brightest = np.argsort(-flux, kind="stable")[:20]
  assert len(chosen) == 10 and set(chosen) <= set(brightest)
  assert brightest[0] in chosen and brightest[-1] in chosen  # thinned evenly: both ends kept


def test_measurements_of_a_packed_store_are_cached_beside_it(tmp_path):
  from stargal_jax.data import formats, store as stores
  images, source = _measurement_source(n=12, seed=4)
  formats.write_unlabelled(tmp_path / "a.npy", images)
  packed = stores.open_dataset(str(tmp_path / "a.npy"), kind="unlabelled", cache_dir=tmp_path / "cache")
  first = scoring.image_measurements(packed)
  cached = list(packed.root.glob(f"measurements-v{scoring.MEASUREMENTS_VERSION}-all.npz"))
  assert len(cached) == 1
  again = scoring.image_measurements(packed)
  direct = scoring.image_measurements(source)  # not a packed store: measured, nothing cached
  for key in first:
    np.testing.assert_array_equal(again[key], first[key])
    np.testing.assert_allclose(direct[key], first[key], rtol=1e-6, atol=1e-9)
