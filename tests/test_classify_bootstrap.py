"""classify.bootstrap: the pseudo-labelling rule and the bright-end measurement on constructed GalSim sets, the
saturation flag, the degraded batches (balanced, deterministic), and the pipeline end to end (slow)."""

import json

import galsim
import numpy as np
import pytest

from conftest import load_config
from stargal_jax import experiment
from stargal_jax import inputs as inputs_lib
from stargal_jax.classify import bootstrap, degrade, predict
from stargal_jax.data import normalize as normalization

N = 64
PIXEL = 0.396


class _Images:
  """The store interface (`len`, `read`) over an array."""

  def __init__(self, images):
    self.images = np.asarray(images, np.float32)
    self.summary = {}

  def __len__(self):
    return len(self.images)

  def read(self, indices):
    return self.images[np.asarray(indices)]


def _draw(obj):
  return obj.drawImage(nx=N, ny=N, scale=PIXEL, offset=(0.5, 0.5)).array


def _scene_set(rng, specs, n_each, noise, profile):
  """(images (n, 5, N, N), kinds): per spec (kind, flux, half-light radius or None for a star, seeing FWHM),
  n_each objects of flux x U(0.7, 1.4), the same image in 5 bands plus white noise."""
  images, kinds = [], []
  for kind, flux, radius, seeing in specs:
    psf = galsim.Kolmogorov(fwhm=seeing)
    for _ in range(n_each):
      obj = psf if radius is None else galsim.Convolve(profile(half_light_radius=radius), psf)
      image = _draw(obj.withFlux(flux * rng.uniform(0.7, 1.4)))
      images.append(np.repeat(image[None], 5, axis=0) + rng.normal(0, noise, (5, N, N)))
      kinds.append(kind)
  return np.asarray(images, np.float32), np.array(kinds)


def _constructed_set(rng, n_each=24, noise=0.03):
  """Bright stars (r ~ 17), bright galaxies (r ~ 17, 1.5"), faint stars and galaxies (r ~ 22.3), in 5 bands."""
  specs = (("bright_star", 600.0, None, 1.3), ("bright_galaxy", 600.0, 1.5, 1.3),
           ("faint_star", 3.0, None, 1.3), ("faint_galaxy", 3.0, 0.4, 1.3))
  return _scene_set(rng, specs, n_each, noise, galsim.Exponential)


def test_pseudo_label_rule_on_a_constructed_set():
  difference = np.array([0.01, 0.09, 0.10, 0.15, 0.19, 0.20, 0.9, 0.01, 0.9, np.nan])
  snr = np.array([80, 80, 80, 80, 80, 80, 80, 20, 20, 80.0])
  labels = bootstrap.pseudo_label_rule(difference + 0.02, snr, 0.02, min_snr=50, cut=0.145, margin=0.05)
  s, g, u = bootstrap.PSEUDO_STAR, bootstrap.PSEUDO_GALAXY, bootstrap.NO_LABEL
  np.testing.assert_array_equal(labels, [s, s, u, u, u, g, g, u, u, u])
  wider = bootstrap.pseudo_label_rule(difference + 0.02, snr, 0.02, min_snr=50, cut=0.145, margin=0.05,
                                     galaxy_margin=0.5)  # galaxies only above 0.645
  np.testing.assert_array_equal(wider, [s, s, u, u, u, u, g, u, u, u])


def test_is_saturated_flags_a_clipped_star_only():
  star = _draw(galsim.Kolmogorov(fwhm=1.3).withFlux(1e5))
  clipped = np.minimum(star, 0.2 * star.max())
  noise = np.random.default_rng(0).normal(0, 1, (N, N))
  images = np.stack([np.repeat(a[None], 5, axis=0) for a in (star, clipped, noise)])
  np.testing.assert_array_equal(bootstrap.is_saturated(images), [False, True, False])


def test_measure_set_labels_the_bright_end_and_leaves_the_faint_end():
  rng = np.random.default_rng(1)
  images, kinds = _constructed_set(rng)
  # One PSF for the set: at these S/N (~10^3) the default rule's cModel chi^2 bound leaves no galaxy in.
  settings = load_config("bootstrap", "no_reference,set_psf").bootstrap.pseudo
  bright = bootstrap.measure_set(_Images(images), settings)
  labelled = dict(zip(bright.indices.tolist(), bright.labels.tolist()))
  for kind, code in (("bright_star", bootstrap.PSEUDO_STAR), ("bright_galaxy", bootstrap.PSEUDO_GALAXY)):
    rows = np.flatnonzero(kinds == kind)
    assert all(labelled.get(int(r)) == code for r in rows), kind
  assert not set(labelled) & set(np.flatnonzero(np.char.startswith(kinds, "faint")).tolist())
  # The conditions come from the set itself: its stars' PSF width and its noise.
  star_sigma = degrade.star_sizes(images[kinds == "bright_star"].astype(np.float64))
  np.testing.assert_allclose(bright.conditions.psf_sigma, np.median(star_sigma, axis=0), rtol=0.03)
  np.testing.assert_allclose(np.median(bright.conditions.noise_sigma, axis=0), 0.03, rtol=0.05)
  assert bright.summary["n_pseudo_star"] == 24 and bright.summary["n_pseudo_galaxy"] == 24


def test_dilated_psf_scales_every_covariance_and_size_ratio_reads_the_scale_back():
  psf = bootstrap.photometry.gaussian_psf_mixture(3.0)
  wide = bootstrap.dilated_psf(psf, 1.5)
  np.testing.assert_allclose(wide.covariances, 2.25 * psf.covariances)
  np.testing.assert_array_equal(wide.amplitudes, psf.amplitudes)
  each = bootstrap.dilated_psf(psf, np.array([1.0, 2.0]))
  assert each.amplitudes.shape == (2, 1) and each.covariances.shape == (2, 1, 2, 2)
  np.testing.assert_allclose(each.covariances[1], 4.0 * psf.covariances)
  # Gaussian stars drawn by GalSim at pixel centres: their size ratio to the PSF is the ratio of the sigmas.
  sigma_px = 3.0 / bootstrap.photometry.GAUSSIAN_FWHM_PER_SIGMA
  stars = [galsim.Gaussian(sigma=k * sigma_px * PIXEL, flux=100.0).drawImage(
      nx=N, ny=N, scale=PIXEL, offset=(0.5, 0.5), method="no_pixel").array for k in (1.0, 1.3, 1.8)]
  images = np.stack([np.repeat(a[None], 5, axis=0) for a in stars])
  np.testing.assert_allclose(bootstrap.size_ratio(images, psf), [1.0, 1.3, 1.8], rtol=5e-3)


def test_worst_seeing_scale_is_the_quantile_of_the_point_like_sizes_never_below_one():
  ratio = np.array([0.9, 1.1, 1.2, 1.3, 1.5, 3.0, np.nan])
  point_like = np.array([True, True, True, True, True, False, True])
  # The point-like, finite values 0.9, 1.1, 1.2, 1.3, 1.5: the 0.75 quantile sits at position 0.75 x 4 = 3.
  assert bootstrap.worst_seeing_scale(ratio, point_like, 0.75) == pytest.approx(1.3)
  assert bootstrap.worst_seeing_scale(ratio, point_like, 0.625) == pytest.approx(0.5 * (1.2 + 1.3))
  assert bootstrap.worst_seeing_scale(ratio, point_like, 0.0) == 1.0  # 0.9 < 1: never narrower than the set's PSF
  assert bootstrap.worst_seeing_scale(ratio, np.zeros(7, bool), 0.9) == 1.0


def _two_seeing_set(rng, n_each=16, noise=0.03):
  """Bright stars in 1.2" and in 1.6" seeing, bright galaxies (de Vaucouleurs, 1") in 1.2" seeing, faint
  galaxies. The bright galaxies are barely larger than the wide stars (adaptive size 1.48 vs 1.32 x the good
  stars'), but their wings are not a PSF's."""
  specs = (("good_star", 300.0, None, 1.2), ("wide_star", 300.0, None, 1.6),
           ("galaxy", 300.0, 1.0, 1.2), ("faint", 3.0, 0.4, 1.2))
  return _scene_set(rng, specs, n_each, noise, galsim.DeVaucouleurs)


def test_seeing_aware_rule_calls_a_star_in_worse_seeing_no_galaxy_where_the_set_psf_rule_does():
  rng = np.random.default_rng(4)
  images, kinds = _two_seeing_set(rng)
  config = load_config("bootstrap", "no_reference,set_psf")
  old = bootstrap.measure_set(_Images(images), config.bootstrap.pseudo)
  new_config = load_config("bootstrap", "no_reference")
  new_config.bootstrap.pseudo.max_galaxy_chi2 = 1e9  # the seeing alone, no goodness-of-fit bound
  new = bootstrap.measure_set(_Images(images), new_config.bootstrap.pseudo)

  def labels_of(bright, kind):
    labelled = dict(zip(bright.indices.tolist(), bright.labels.tolist()))
    return np.array([labelled.get(int(r), bootstrap.NO_LABEL) for r in np.flatnonzero(kinds == kind)])

  g, s = bootstrap.PSEUDO_GALAXY, bootstrap.PSEUDO_STAR
  assert np.all(labels_of(old, "wide_star") == g)  # one PSF for the set: the wide stars look extended
  assert not np.any(labels_of(new, "wide_star") == g)  # against the worst seeing of the set they do not
  assert np.all(labels_of(new, "galaxy") == g) and np.all(labels_of(old, "galaxy") == g)
  np.testing.assert_array_equal(labels_of(new, "good_star"), labels_of(old, "good_star"))  # the star rule stays
  assert np.all(labels_of(new, "good_star") == s) and np.all(labels_of(new, "faint") == bootstrap.NO_LABEL)
  # The scale measured is the wide stars' seeing relative to the set's PSF (the good stars': 1.2").
  assert new.summary["seeing_scale"] == pytest.approx(1.6 / 1.2, rel=0.05)
  assert "seeing_scale" not in old.summary


def test_seeing_aware_rule_leaves_out_a_blend_its_galaxy_model_cannot_describe():
  rng = np.random.default_rng(5)
  psf = galsim.Kolmogorov(fwhm=1.2)
  noisy = lambda obj: np.repeat(_draw(obj)[None], 5, axis=0) + rng.normal(0, 0.03, (5, N, N))
  stars = [noisy(psf.withFlux(300.0 * rng.uniform(0.7, 1.4))) for _ in range(16)]
  galaxies = [noisy(galsim.Convolve(galsim.DeVaucouleurs(half_light_radius=1.0), psf).withFlux(
      300.0 * rng.uniform(0.7, 1.4))) for _ in range(8)]
  # A star 3 x brighter 2-4" from the central one: one object to a single extended model, a poor one.
  blends = [noisy(psf.withFlux(100.0) + psf.withFlux(300.0).shift(sep, 0.0)) for sep in np.linspace(2.0, 4.0, 8)]
  store = _Images(np.asarray(stars + galaxies + blends, np.float32))
  old = bootstrap.measure_set(store, load_config("bootstrap", "no_reference,set_psf").bootstrap.pseudo)
  new = bootstrap.measure_set(store, load_config("bootstrap", "no_reference").bootstrap.pseudo)
  said = lambda bright: {int(i): int(c) for i, c in zip(bright.indices, bright.labels)}
  blend_rows, galaxy_rows = range(24, 32), range(16, 24)
  assert all(said(old).get(r) == bootstrap.PSEUDO_GALAXY for r in blend_rows)
  assert not any(said(new).get(r) == bootstrap.PSEUDO_GALAXY for r in blend_rows)
  assert all(said(new).get(r) == bootstrap.PSEUDO_GALAXY for r in galaxy_rows)
  assert new.summary["seeing_scale"] == pytest.approx(1.0, abs=0.01)  # one seeing: the set's PSF itself


def test_degraded_batches_are_balanced_deterministic_and_normalised():
  rng = np.random.default_rng(2)
  images, kinds = _constructed_set(rng, n_each=8)
  store = _Images(images)
  settings = load_config("bootstrap", "no_reference,set_psf").bootstrap
  bright = bootstrap.measure_set(store, settings.pseudo)
  normalizer = normalization.fit_normalizer(images, "asinh", max_images=64)
  batch_for_step = bootstrap.degraded_batches(store, bright, normalizer, bootstrap.degrade_options(settings.degrade),
                                              batch_size=16, seed=3)
  a, b, c = batch_for_step(5), batch_for_step(5), batch_for_step(6)
  assert a["x"].shape == (16, N, N, 5) and a["x"].dtype == np.float32
  assert a["label"].sum() == 8  # half pseudo-galaxies
  np.testing.assert_array_equal(a["x"], b["x"])
  assert np.abs(a["x"] - c["x"]).max() > 0.1


@pytest.mark.slow
def test_pipeline_smoke_run_is_deterministic_and_writes_the_outputs(tmp_path, smoke_cache):
  outs = []
  for run in ("a", "b"):
    config = load_config("bootstrap", "smoke")
    config.data.cache_dir = smoke_cache
    workdir = tmp_path / run
    metrics = experiment.run(config, workdir)
    assert {"auc", "by_mag", "baselines", "supervised_cnn"} <= set(metrics)
    assert "sdss_psf_minus_cmodel" in metrics["baselines"] and len(metrics["supervised_cnn"]["by_mag"]) == 3
    summary = json.loads((workdir / "bootstrap.json").read_text())["bright_end"]
    assert summary["n_pseudo_star"] > 0 and summary["n_pseudo_galaxy"] > 0
    with np.load(workdir / "predictions.npz", allow_pickle=False) as f:
      outs.append(f["score"])
  np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.slow
def test_student_rounds_keep_the_last_round_as_the_classifier(tmp_path, smoke_cache):
  config = load_config("bootstrap", "smoke,student,no_reference")
  config.data.cache_dir = smoke_cache
  config.bootstrap.student_confident_logit = 0.0  # the smoke model is barely trained: every object counts
  config.bootstrap.stop_changed_fraction = 0.0  # never stop early: all three rounds run
  experiment.run(config, tmp_path)
  rounds = json.loads((tmp_path / "bootstrap.json").read_text())["rounds"]
  assert [r["round"] for r in rounds] == [0, 1, 2] and all("changed_fraction" in r for r in rounds[1:])
  assert rounds[1]["n_confident_real"] == 400  # every unlabelled smoke object
  run = predict.load_run(tmp_path)
  with np.load(tmp_path / "latents.npz", allow_pickle=False) as f:
    latents = f["latents"]
  labelled = inputs_lib.load_inputs(config.data, seed=config.seed).labelled
  np.testing.assert_allclose(predict.encode(run, labelled)[0], latents, rtol=1e-5, atol=1e-5)


def test_config_checks_trace_the_classifier_with_labels_and_name_a_bad_setting():
  from types import SimpleNamespace
  from stargal_jax import config_checks as cc
  config = load_config("bootstrap")
  assert experiment.classification_stages(config)["classifier"]["z"] == (1,)  # the traced batch carries 'label'
  config.bootstrap.pseudo.preselect_fraction = 1.5
  config.supervised_cnn.folds = 1
  with pytest.raises(cc.ConfigError, match=r"config.bootstrap.pseudo.preselect_fraction = 1.5: must be in \(0, 1\];"
                                           r" config.supervised_cnn.folds = 1: must be an integer >= 2"):
    experiment.check_config(config)
  config = load_config("bootstrap")
  assert config.classifier.ensemble == 3 and "ensemble" not in config.supervised_cnn
  config.classifier.ensemble = 0
  with pytest.raises(cc.ConfigError, match=r"config.classifier.ensemble = 0: must be an integer >= 1"):
    experiment.check_config(config)
  config = load_config("bootstrap")
  config.supervised_cnn.train.batch_size = 7
  opened = SimpleNamespace(labelled=[0] * 10, source="ten objects")
  config.supervised_cnn.folds = 3  # folds of 4, 3, 3: the first trains on 6 < 7
  with pytest.raises(cc.ConfigError, match=r"batch_size = 7: must be <= 6, the labelled objects a fold trains on"):
    experiment.supervised_cnn_fits(config, opened)
  config.supervised_cnn.train.batch_size = 6
  experiment.supervised_cnn_fits(config, opened)


def test_bright_end_cache_key_holds_the_code_version(monkeypatch, tmp_path):
  class Store:
    summary = {"fingerprint": "abc"}
  settings = {"min_snr": 50.0}
  first = bootstrap._cache_path(Store(), settings, tmp_path)
  monkeypatch.setattr(bootstrap, "BRIGHT_END_VERSION", bootstrap.BRIGHT_END_VERSION + 1)
  second = bootstrap._cache_path(Store(), settings, tmp_path)
  assert first.parent == second.parent and first != second and first.name.startswith("abc-")
