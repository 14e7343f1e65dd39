"""The bootstrapped classifier: a CNN taught by the bright end of the unlabelled set, without any label.

At high S/N the classical criterion is unambiguous; at the faint end it is not. The design carries the bright
end's certainty to the faint end:
1. Pseudo-labels (`bright_end`). The unlabelled set's objects above `min_snr` (model-fit S/N, cModel flux over
   the PSF-flux error), not saturated, get SDSS's own criterion psfMag - cModelMag (`photometry`, the set's own
   PSF), measured from the set's stellar locus: below cut - margin a star, above cut + margin a galaxy
   (cut = 0.145, SDSS's; the guard band leaves out the ambiguous ones). With `seeing_aware`, galaxies only where
   extended even against the set's worst plausible seeing, measured from its own point-like objects, and
   described by their cModel fit (`seeing_aware_galaxies`): the seeing varies between fields, so one PSF for
   the set calls stars in worse seeing galaxies.
2. Degradation (`degrade`): each pseudo-labelled cutout, at every step, made to look like an object of the set's
   faint end: a magnitude from the set's own distribution, the set's noise, its seeing, galaxies smaller
   (shrink and reconvolve), sub-pixel shifts and the dihedral group.
3. Training: `config.classifier` (a `conv_classifier` with the `bce` loss) by the project's trainer, batches
   balanced between the two pseudo-classes.
4. Rounds (noisy student, `config.bootstrap.rounds` > 1): the trained model labels the set's own objects where
   it is confident (|logit| > `student_confident_logit`); the next model trains on those real cutouts
   (augmented) mixed with the degraded bright ones. Stopping rule: stop when fewer than
   `stop_changed_fraction` of the set change class (at the prior threshold) between two rounds, or after
   `rounds` rounds.
5. Score: the final model's logit on the labelled set (config.score 'latent_unit', unit 0): larger = galaxy by
   construction, thresholded at the prior star fraction.

The set's measurements and pseudo-labels depend only on the unlabelled store and the pseudo-label settings, so
they are cached (`cache_dir/bootstrap/`) and shared by seeds and runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stargal_jax import morphology, paths, photometry, stages, train
from stargal_jax import inputs as inputs_lib
from stargal_jax.classify import degrade
from stargal_jax.data import normalize as normalization

PSEUDO_STAR, PSEUDO_GALAXY, NO_LABEL = 0, 1, -1
R_BAND = morphology.R_BAND
SATURATION_RTOL = 1e-3  # clipped pixels agree to the dark noise (~1e-4 of the level); a PSF's top does not
SATURATION_PLATEAU_PIXELS = 4
CORE_RADIUS_PX = 8.0
CHUNK = 1024
NOISE_SAMPLE = 500  # cutouts the noise power spectrum is measured on
FINAL_STAGE = "classifier"
# Part of the bright end's cache key: raise it whenever measure_set's rules change, so that a cached set of
# pseudo-labels made by other code is never reused (the key holds the settings and the store, not the code).
BRIGHT_END_VERSION = 3
MEMBER_SEED_STRIDE = 100_003  # an ensemble member's data seed offset (rounds use +1, the student's real batches +1000)


# ------------------------------------------------------------------------------------ pseudo-labels

def is_saturated(images, band: int = R_BAND) -> np.ndarray:
  """(N,) a flat top: at least SATURATION_PLATEAU_PIXELS pixels within 8 px of the centre equal (to
  SATURATION_RTOL) to the maximum there, as a full well clipped and bled along columns leaves it."""
  pixels = np.nan_to_num(np.asarray(images[:, band], dtype=np.float64))
  height, width = pixels.shape[1:]
  y, x = np.indices((height, width))
  core = np.hypot(y - height // 2, x - width // 2) <= CORE_RADIUS_PX
  values = pixels[:, core]
  peak = values.max(axis=1)
  plateau = np.abs(values - peak[:, None]) <= SATURATION_RTOL * np.abs(peak[:, None])
  return (peak > 0) & (plateau.sum(axis=1) >= SATURATION_PLATEAU_PIXELS)


def pseudo_label_rule(psf_minus_cmodel: np.ndarray, snr: np.ndarray, locus_centre: float, *, min_snr: float,
                      cut: float, margin: float, galaxy_margin: float | None = None) -> np.ndarray:
  """(N,) PSEUDO_STAR / PSEUDO_GALAXY / NO_LABEL: at S/N >= min_snr, psfMag - cModelMag measured from the
  stellar locus below cut - margin is a star, above cut + galaxy_margin (default: margin) a galaxy; the rest
  (faint, ambiguous or
  unmeasured) stay unlabelled."""
  d = np.asarray(psf_minus_cmodel, dtype=np.float64) - locus_centre
  confident = np.isfinite(d) & np.isfinite(snr) & (np.asarray(snr) >= min_snr)
  labels = np.full(len(d), NO_LABEL, dtype=np.int8)
  labels[confident & (d < cut - margin)] = PSEUDO_STAR
  labels[confident & (d > cut + (margin if galaxy_margin is None else galaxy_margin))] = PSEUDO_GALAXY
  return labels


def dilated_psf(psf: photometry.GaussianMixture, scale) -> photometry.GaussianMixture:
  """The PSF seen in `scale` times wider seeing: every covariance x scale^2 (an atmospheric PSF's shape scales with
  its FWHM; the Kolmogorov profile exactly). `scale` a scalar (shared) or (N,) (per object, on a shared PSF)."""
  amps, covs = np.asarray(psf.amplitudes, np.float64), np.asarray(psf.covariances, np.float64)
  scale = np.asarray(scale, np.float64)
  if scale.ndim == 0:
    return photometry.GaussianMixture(amps, covs * scale ** 2)
  return photometry.GaussianMixture(np.broadcast_to(amps, scale.shape + amps.shape).copy(),
                                    covs[None] * scale[:, None, None, None] ** 2)


def size_ratio(images, psf: photometry.GaussianMixture, band: int = R_BAND) -> np.ndarray:
  """(N,) each object's adaptive-moment size sqrt(sqrt(det M)) over the PSF model's own (rendered at pixel
  centres): the seeing, relative to the PSF's, that a point source of this size was seen in (1 for the PSF
  itself, k for the PSF dilated by k). NaN where the moments fail."""
  pixels, _ = photometry.fitting.prepare_band(images, band)
  _, _, moments = photometry.psf.adaptive_moments(pixels)
  _, _, reference = photometry.psf.adaptive_moments(photometry.psf.mixture_image(psf, *pixels.shape[1:])[None])
  with np.errstate(invalid="ignore"):
    return np.sqrt(np.sqrt(np.linalg.det(moments) / np.linalg.det(reference[0])))


def worst_seeing_scale(ratio: np.ndarray, point_like: np.ndarray, quantile: float) -> float:
  """The seeing scale (relative to the set's PSF) that `quantile` of the set's point-like objects are seen in or
  better: the `quantile` quantile of their size ratios, never below 1 (the set's PSF itself). 1 when none."""
  values = np.asarray(ratio, np.float64)[np.asarray(point_like, bool)]
  values = values[np.isfinite(values)]
  return float(max(1.0, np.quantile(values, quantile))) if values.size else 1.0


def seeing_distribution(images, psf: photometry.GaussianMixture, fits, snr: np.ndarray, margin: float, min_snr: float
                        ) -> tuple[np.ndarray, np.ndarray]:
  """The set's seeing distribution, from the set itself: (ratio (N,), point_like (N,) bool).

  Each object is fitted with the set's PSF dilated to its own size (`size_ratio`); the bright ones (S/N >=
  min_snr) whose psfMag against it minus cModelMag (set PSF) is below `margin` are point-like at their own seeing
  (a PSF of their size holds all their light), and their size ratios are the set's seeing distribution (the
  stellar locus in size).
  """
  bright = np.isfinite(snr) & (snr >= min_snr)
  ratio = size_ratio(images, psf)
  own = np.clip(np.where(np.isfinite(ratio), ratio, 1.0), 0.5, 8.0)
  own_fits = photometry.fit_models(images, dilated_psf(psf, own), R_BAND)
  with np.errstate(divide="ignore", invalid="ignore"):
    own_difference = -2.5 * np.log10(np.where((own_fits.psf_flux > 0) & (fits.cmodel_flux > 0),
                                              own_fits.psf_flux / fits.cmodel_flux, np.nan))
  point_like = bright & np.isfinite(own_difference) & (own_difference < margin) & np.isfinite(ratio)
  return ratio, point_like


def seeing_aware_galaxies(images, psf: photometry.GaussianMixture, fits, snr: np.ndarray, settings
                          ) -> tuple[np.ndarray, dict]:
  """(N,) pseudo-galaxies extended even against the set's worst plausible seeing, and label-free measurements.

  The seeing varies between fields, so one PSF for the set makes stars seen in worse seeing look extended.
  1. The seeing distribution (`seeing_distribution`: `ratio` of the `point_like` objects).
  2. The worst plausible seeing: its `seeing_quantile` quantile k (`worst_seeing_scale`).
  3. Every object refitted with the PSF dilated by k: psfMag - cModelMag against it above cut + galaxy_margin
     (a point source seen in seeing up to k has ~0 there: both models reduce to the PSF), with a cModel fit
     that describes the object (chi^2 per pixel, set PSF, below `max_galaxy_chi2`; a blend with a brighter
     neighbour is not described), is a pseudo-galaxy.
  Both references are 0, not a stellar locus measured on the brightest objects: those may be galaxies or blends.
  Compact galaxies that pass as point-like widen the measured seeing: fewer pseudo-galaxies, not impure ones.
  """
  bright = np.isfinite(snr) & (snr >= settings.min_snr)
  ratio, point_like = seeing_distribution(images, psf, fits, snr, settings.margin, settings.min_snr)
  scale = worst_seeing_scale(ratio, point_like, float(settings.seeing_quantile))
  worst = photometry.fit_models(images, dilated_psf(psf, scale), R_BAND)
  difference = photometry.psf_minus_cmodel(worst)
  centre, width = photometry.stellar_locus(difference, snr)
  with np.errstate(divide="ignore", invalid="ignore"):
    described = fits.chi2_cmodel / fits.n_pixels < float(settings.max_galaxy_chi2)
  galaxy = bright & np.isfinite(difference) & (difference > settings.cut + settings.galaxy_margin) & described
  return galaxy, {"seeing_scale": scale, "n_point_like_seeing": int(point_like.sum()),
                  "seeing_locus_centre_mag": centre, "seeing_locus_width_mag": width}


class BrightEnd(NamedTuple):
  """The pseudo-labelled bright end of a set and the set's conditions (`measure_set`)."""
  indices: np.ndarray  # (M,) rows of the set with a pseudo-label
  labels: np.ndarray  # (M,) PSEUDO_STAR / PSEUDO_GALAXY
  r_mag: np.ndarray  # (N,) every object's r magnitude
  noise_sigma: np.ndarray  # (N, 5) every object's background noise
  conditions: degrade.Conditions
  summary: dict  # label-free counts and measurements, written to bootstrap.json


def _chunked(store, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  return np.concatenate([fn(store.read(np.arange(s, min(s + CHUNK, len(store))))) for s in range(0, len(store), CHUNK)])


def measure_set(store, settings) -> BrightEnd:
  """Measures the set (magnitudes, noise, aperture S/N), fits PSF/deV/exp models to the bright candidates
  (aperture S/N >= preselect_fraction x min_snr, not saturated, at most max_fit of them, evenly thinned), and
  pseudo-labels them (`pseudo_label_rule`); the set's `Conditions` use the pseudo-stars for its seeing."""
  r_mag = _chunked(store, morphology.r_magnitude)
  noise = _chunked(store, degrade.background_noise)
  area = np.pi * morphology.CONCENTRATION_RADII_PX[1] ** 2
  with np.errstate(divide="ignore", invalid="ignore"):
    aperture_snr = _chunked(store, lambda im: morphology.aperture_flux(im, morphology.CONCENTRATION_RADII_PX[1])) / (
        noise[:, R_BAND] * np.sqrt(area))
  saturated = _chunked(store, is_saturated)
  candidates = np.flatnonzero((np.nan_to_num(aperture_snr) >= settings.preselect_fraction * settings.min_snr)
                              & ~saturated)
  if len(candidates) > settings.max_fit:
    candidates = candidates[np.linspace(0, len(candidates) - 1, settings.max_fit).astype(np.int64)]
  if len(candidates) < photometry.MIN_PSF_STARS:
    raise ValueError(f"only {len(candidates)} objects of the unlabelled set reach S/N "
                     f"{settings.preselect_fraction * settings.min_snr:g}: no bright end to bootstrap from "
                     "(config.bootstrap.pseudo.min_snr)")
  images = store.read(candidates)
  try:  # the candidates are the bright end already: every one of them may join the PSF stack
    psf = photometry.estimate_psf_model(images, R_BAND, bright_fraction=1.0).mixture
  except ValueError as error:  # too few isolated stars (tiny sets): a Gaussian of the stellar locus's width
    warnings.warn(f"{error}; using a Gaussian PSF", stacklevel=2)
    psf = photometry.gaussian_psf_mixture(morphology.estimate_psf(images, R_BAND, bright_fraction=1.0).fwhm_px)
  fits = photometry.fit_models(images, psf, R_BAND)
  difference = photometry.psf_minus_cmodel(fits)
  with np.errstate(divide="ignore", invalid="ignore"):
    snr = fits.cmodel_flux / fits.psf_flux_err
  locus_centre, locus_width = photometry.stellar_locus(difference, snr)
  labels = pseudo_label_rule(difference, snr, locus_centre, min_snr=settings.min_snr, cut=settings.cut,
                             margin=settings.margin, galaxy_margin=settings.get("galaxy_margin"))
  seeing = {}
  if settings.get("seeing_aware", False):
    galaxy, seeing = seeing_aware_galaxies(images, psf, fits, snr, settings)
    labels[labels == PSEUDO_GALAXY] = NO_LABEL  # the pseudo-star rule stays; galaxies only against the worst seeing
    labels[galaxy & (labels != PSEUDO_STAR)] = PSEUDO_GALAXY
  stars = labels == PSEUDO_STAR
  if stars.sum() < 2 or (labels == PSEUDO_GALAXY).sum() < 2:
    raise ValueError(f"the bright end holds {stars.sum()} pseudo-stars and {(labels == PSEUDO_GALAXY).sum()} "
                     "pseudo-galaxies: too few to bootstrap from (config.bootstrap.pseudo)")
  rng = np.random.default_rng(0)
  noise_rows = np.sort(rng.choice(len(store), min(NOISE_SAMPLE, len(store)), replace=False))
  conditions = degrade.measure_conditions(r_mag[np.isfinite(r_mag)], noise, images[stars],
                                          store.read(noise_rows), correlated_noise=settings.correlated_noise)
  keep = labels != NO_LABEL
  summary = {"n_set": int(len(store)), "n_saturated": int(saturated.sum()), "n_fitted": int(len(candidates)),
             "n_pseudo_star": int(stars.sum()), "n_pseudo_galaxy": int((labels == PSEUDO_GALAXY).sum()),
             "locus_centre_mag": locus_centre, "locus_width_mag": locus_width, "psf_fwhm_px": float(photometry.mixture_fwhm_px(psf)),
             "psf_sigma_px_per_band": conditions.psf_sigma.tolist(),
             "median_noise_per_band": np.median(conditions.noise_sigma, axis=0).tolist(),
             "pseudo_r_mag_range": [float(np.min(r_mag[candidates[keep]])), float(np.max(r_mag[candidates[keep]]))],
             "noise_power_max_per_band": conditions.noise_power.max(axis=(1, 2)).tolist(), **seeing}
  return BrightEnd(candidates[keep], labels[keep], r_mag, noise, conditions, summary)


def _cache_path(store, settings: dict, cache_dir) -> Path | None:
  fingerprint = store.summary.get("fingerprint") if isinstance(getattr(store, "summary", None), dict) else None
  if not fingerprint:
    return None
  key = hashlib.sha256(json.dumps({**settings, "_version": BRIGHT_END_VERSION}, sort_keys=True).encode()).hexdigest()[:12]
  return paths.cache_dir(cache_dir) / "bootstrap" / f"{fingerprint}-{key}.npz"


def bright_end(store, settings, cache_dir: str = "") -> BrightEnd:
  """`measure_set`, read from or written to the cache when the store has a fingerprint."""
  path = _cache_path(store, settings.to_dict(), cache_dir)
  if path is not None and path.exists():
    with np.load(path, allow_pickle=False) as f:
      conditions = degrade.Conditions(*(f[f"conditions_{k}"] for k in degrade.Conditions._fields))
      return BrightEnd(f["indices"], f["labels"], f["r_mag"], f["noise_sigma"], conditions,
                       json.loads(str(f["summary"])))
  measured = measure_set(store, settings)
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".partial-{os.getpid()}.npz")
    np.savez(partial, indices=measured.indices, labels=measured.labels, r_mag=measured.r_mag,
             noise_sigma=measured.noise_sigma, summary=json.dumps(measured.summary),
             **{f"conditions_{k}": v for k, v in measured.conditions._asdict().items()})
    os.replace(partial, path)
  return measured


# ------------------------------------------------------------------------------------ batches

def degrade_options(settings) -> degrade.DegradeOptions:
  return degrade.DegradeOptions(float(settings.shrink_exponent_max), float(settings.max_scale),
                                bool(settings.broaden), float(settings.max_shift_px),
                                float(settings.keep_bright_fraction))


def degraded_batches(store, bright: BrightEnd, normalizer: dict, options: degrade.DegradeOptions,
                     batch_size: int, seed: int) -> Callable[[int], dict]:
  """`batch_for_step(step)` -> {'x': NHWC normalised degraded cutouts, 'label'}: half pseudo-stars, half
  pseudo-galaxies, drawn and degraded as a pure function of (seed, step)."""
  conditions = degrade.conditions_arrays(bright.conditions)
  by_class = [bright.indices[bright.labels == c] for c in (PSEUDO_STAR, PSEUDO_GALAXY)]
  noise = np.nan_to_num(bright.noise_sigma)

  @jax.jit
  def prepare(key, images, mags, source_noise):
    out = degrade.degrade(key, images, mags, source_noise, conditions, options)
    return jnp.transpose(normalization.normalize(normalizer, out), (0, 2, 3, 1))

  def batch_for_step(step: int) -> dict:
    rng = np.random.default_rng([seed, step])
    half = batch_size // 2
    rows = np.concatenate([rng.choice(by_class[0], half), rng.choice(by_class[1], batch_size - half)])
    labels = np.r_[np.zeros(half), np.ones(batch_size - half)].astype(np.float32)
    order = np.argsort(rows, kind="stable")
    rows, labels = rows[order], labels[order]
    x = prepare(jax.random.fold_in(jax.random.key(seed), step), store.read(rows), bright.r_mag[rows], noise[rows])
    return {"x": np.asarray(x), "label": labels}

  return batch_for_step


def augmented_batches(store, rows: np.ndarray, labels: np.ndarray, normalizer: dict, max_shift_px: float,
                      batch_size: int, seed: int) -> Callable[[int], dict]:
  """`batch_for_step(step)` over real cutouts `rows` with `labels`: shuffled epochs, dihedral transforms and
  sub-pixel shifts (the supervised reference; the student rounds' real objects)."""

  @jax.jit
  def prepare(key, images):
    out = degrade.augment(key, images, max_shift_px)
    return jnp.transpose(normalization.normalize(normalizer, out), (0, 2, 3, 1))

  steps_per_epoch = len(rows) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch size {batch_size} is larger than the {len(rows)} training cutouts")

  def batch_for_step(step: int) -> dict:
    epoch, position = divmod(step, steps_per_epoch)
    chosen = np.sort(np.random.default_rng([seed, epoch]).permutation(len(rows))[
        position * batch_size:(position + 1) * batch_size])
    x = prepare(jax.random.fold_in(jax.random.key(seed), step), store.read(rows[chosen]))
    return {"x": np.asarray(x), "label": np.asarray(labels[chosen], np.float32)}

  return batch_for_step


def mixed_batches(first: Callable[[int], dict], second: Callable[[int], dict], second_fraction: float,
                  batch_size: int) -> Callable[[int], dict]:
  """Each step's batch: the first round(second_fraction x B) of `second`'s batch and the rest of `first`'s."""
  n_second = int(round(second_fraction * batch_size))

  def batch_for_step(step: int) -> dict:
    a, b = first(step), second(step)
    return {k: np.concatenate([a[k][:batch_size - n_second], b[k][:n_second]]) for k in ("x", "label")}

  return batch_for_step


# ------------------------------------------------------------------------------------ the pipeline

def _train_classifier(stage_config, member_batches: Callable[[int], Callable[[int], dict]], key, ckpt_dir: Path,
                      name: str) -> train.TrainResult:
  """The classifier trained on `member_batches(0)`; an ensemble (`stages.ensemble_size` > 1) of members, member m
  on `member_batches(m)` with its own key, as one vmapped program. Why an ensemble: one 300-step CNN decides the
  bright stars, which the degraded batches hold few of, differently from seed to seed (README); the members'
  mean logit does not follow any one of them."""
  loss, options = stage_config.loss.to_dict(), stage_config.loss_options.to_dict()
  members = stages.ensemble_size(stage_config)
  if members == 1:
    init_key, step_key = jax.random.split(key)
    return train.train(stages.build_model(stage_config, init_key), stage_config.train, loss, options,
                       member_batches(0), step_key, ckpt_dir, name)
  schedules = [member_batches(m) for m in range(members)]

  def stacked(step: int) -> dict:
    batches = [schedule(step) for schedule in schedules]
    return {k: np.stack([b[k] for b in batches]) for k in ("x", "label")}

  return train.train_seeds(lambda k: stages.build_model(stage_config, k), jax.random.split(key, members),
                           stage_config.train, loss, options, stacked, ckpt_dir, name)


def logits(result: train.TrainResult, stage_config, store, normalizer: dict, batch_size: int) -> np.ndarray:
  """(N,) the classifier's logits on the real cutouts of a store (an ensemble's: the members' mean)."""
  fetch = inputs_lib.model_images(store, normalizer)
  return stages.predict_stage(result, stage_config, fetch, len(store), batch_size, keys=("z",))["z"][:, 0].astype(
      np.float64)


def train_bootstrap(config, inputs: inputs_lib.Inputs, workdir: Path, key: jax.Array) -> dict:
  """The `bootstrap` pipeline (module docstring): {'latents': (N, 1) logits of the labelled set, 'history'}."""
  settings = config.bootstrap
  workdir = Path(workdir)
  bright = bright_end(inputs.unlabelled, settings.pseudo, config.data.cache_dir)
  stage = config.classifier
  batch_size = int(stage.train.batch_size)
  eval_bs = int(config.eval.eval_batch_size)
  options = degrade_options(settings.degrade)
  data_key, train_key = jax.random.split(key)
  data_seed = int(jax.random.randint(data_key, (), 0, 2**31 - 1))
  n_rounds = int(settings.rounds)
  history, rounds, previous = {}, [], None
  for r in range(n_rounds):
    name = FINAL_STAGE if n_rounds == 1 else f"{FINAL_STAGE}_round{r}"
    if r > 0:
      confident = np.flatnonzero(np.abs(previous) > float(settings.student_confident_logit))

    def member_batches(m: int, r: int = r) -> Callable[[int], dict]:
      # Member 0 draws what a single classifier draws; member m > 0 its own data seed.
      seed = data_seed + r + MEMBER_SEED_STRIDE * m
      batches = degraded_batches(inputs.unlabelled, bright, inputs.normalizer, options, batch_size, seed)
      if r == 0:
        return batches
      real = augmented_batches(inputs.unlabelled, confident, (previous[confident] > 0).astype(np.float32),
                               inputs.normalizer, options.max_shift_px, batch_size, seed + 1000)
      return mixed_batches(batches, real, float(settings.student_real_fraction), batch_size)

    result = _train_classifier(stage, member_batches, jax.random.fold_in(train_key, r),
                               workdir / "checkpoints" / name, name)
    history[name] = result.history
    if n_rounds == 1:
      rounds.append({"round": 0})
      break
    current = logits(result, stage, inputs.unlabelled, inputs.normalizer, eval_bs)
    entry = {"round": r, "n_confident_real": 0 if r == 0 else int(len(confident))}
    if previous is not None:
      star_fraction = float(config.data.star_fraction)
      changed = float(np.mean((previous > np.quantile(previous, star_fraction))
                              != (current > np.quantile(current, star_fraction))))
      entry["changed_fraction"] = changed
    rounds.append(entry)
    previous = current
    if entry.get("changed_fraction", 1.0) < float(settings.stop_changed_fraction) or r == n_rounds - 1:
      shutil.copytree(workdir / "checkpoints" / name, workdir / "checkpoints" / FINAL_STAGE, dirs_exist_ok=True)
      break
  final = stages.restore_stage(stage, workdir / "checkpoints" / FINAL_STAGE) if n_rounds > 1 else result
  fetch_l = inputs_lib.model_images(inputs.labelled, inputs.normalizer)
  latents = stages.predict_stage(final, stage, fetch_l, len(inputs.labelled), eval_bs, keys=("z",))["z"]
  (workdir / "bootstrap.json").write_text(json.dumps({"bright_end": bright.summary, "rounds": rounds}, indent=2))
  return {"latents": np.asarray(latents, np.float64), "history": history}
