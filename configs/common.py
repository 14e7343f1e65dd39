"""Shared configuration pieces. Configs are plain ml_collections; no jax imports here."""

import dataclasses

import ml_collections

from stargal_jax.simulate.params import SimParams


def data_config() -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict()
  data.labelled = ""  # Directory or glob of the study's labelled .npy files; "" = embedded default data.
  data.unlabelled = ""  # Same for the unlabelled files.
  # Prior fraction of point-like objects (stars + QSOs): places the threshold. 0.425 is the point-like share
  # of the default data's 5,000 labelled objects (2,123: measured from their truth, simulator v2.0,
  # SimParams.point_fraction 0.43); the study used 0.3. Set it to your own sample's expected fraction.
  data.star_fraction = 0.425
  data.nan_policy = "zero"  # Non-finite pixels: zero | drop | raise.
  data.skip_bad_files = False  # Skip (count and list) malformed files instead of stopping.
  data.normalization = "asinh"  # asinh | asinh_shape | zscore; statistics fitted on the training set.
  # Train on the labelled set's images too (never its labels): more unlabelled data, the same objects scored.
  data.train_on_labelled_images = False
  data.normalizer_sample = 2000  # Images used to fit the normalisation statistics.
  data.cache_dir = ""  # "" = $STARGAL_CACHE or ~/.cache/stargal_jax.
  # Size of the embedded simulated data set, generated on first use and reused afterwards.
  data.default_n_labelled = 5000
  data.default_n_unlabelled = 10000
  data.default_seed = 2017
  data.workers = 0  # Simulator processes; 0 = all cores.
  # The embedded simulator's parameters (every stargal_jax.simulate.SimParams field, at its default), e.g.
  # --config.data.sim_params.seeing_r_median_arcsec=1.6 for a shifted simulation, cached under its own name.
  data.sim_params = ml_collections.ConfigDict(dataclasses.asdict(SimParams()))
  data.mag_bins = (19.0, 21.0)  # r-magnitude bin edges for the per-magnitude metrics.
  # Reading policies of the data layer (stargal_jax.data.formats; part of each packed store's fingerprint):
  data.duplicates = "raise"  # An objID seen twice in the labelled set: raise | keep_first (counted).
  data.max_records_per_file = 100_000  # A file whose header declares more records is refused (never allocated).
  data.pixel_bounds = (-1e3, 1e6)  # Nanomaggies; pixels outside count as bad pixels, like non-finite ones.
  return data


def train_config(steps: int, batch_size: int = 128, learning_rate: float = 1e-3) -> ml_collections.ConfigDict:
  train = ml_collections.ConfigDict()
  train.steps = steps
  train.batch_size = batch_size
  train.learning_rate = learning_rate
  train.lr_schedule = "constant"  # constant | cosine (decay to 0 at the last step; train.LR_SCHEDULES)
  train.grad_clip = 10.0
  train.checkpoint_every = 200
  train.log_every = 50
  train.augment = "none"  # none | dihedral (a random symmetry of the square per image and step)
  return train


def stage1_ae_config(steps: int) -> ml_collections.ConfigDict:
  """The study's stage-1 AE: conv 40-40-20-20, LeakyReLU(0.3), batch norm, 30-d tanh latent, MSE."""
  ae = ml_collections.ConfigDict()
  ae.model = "conv_ae"
  ae.model_kwargs = ml_collections.ConfigDict(dict(
      latent_dim=30, channels=(40, 40, 20, 20), activation="leaky_relu", norm="batch",
      latent_activation="tanh"))
  ae.loss = ml_collections.ConfigDict(dict(recon_mse=1.0))
  ae.loss_options = ml_collections.ConfigDict()
  ae.train = train_config(steps)
  return ae


def classifier_config(steps: int) -> ml_collections.ConfigDict:
  """The CNN classifier (cutout -> one logit, binary cross-entropy): the bootstrap design and the supervised
  CNN reference."""
  stage = ml_collections.ConfigDict()
  stage.model = "conv_classifier"
  stage.model_kwargs = ml_collections.ConfigDict(dict(channels=(32, 64, 64), stem_channels=16, crop=32, hidden=64,
                                                      activation="relu", norm="none"))
  stage.loss = ml_collections.ConfigDict(dict(bce=1.0))
  stage.loss_options = ml_collections.ConfigDict()
  stage.train = train_config(steps)
  return stage


def supervised_cnn_config(steps: int = 1500, folds: int = 5) -> ml_collections.ConfigDict:
  """The supervised CNN reference: `classifier_config` trained on the labelled images' labels, k-fold."""
  stage = classifier_config(steps)
  stage.folds = folds
  stage.max_shift_px = 0.5  # augmentation: sub-pixel shifts and the dihedral group
  return stage


def score_config(method: str = "isomap", unit: int = 0) -> ml_collections.ConfigDict:
  score = ml_collections.ConfigDict()
  score.method = method  # latent_unit | uncorrelated_with_magnitude | isomap | tsne | spectral | pca | gmm | kmeans
  score.unit = unit  # For method latent_unit: which latent unit's mean is the 1-D score.
  score.n_neighbors = 10
  score.fit_size = 5000  # Manifold fitted on this many objects, extended out of sample to the rest.
  return score


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.pipeline = ""
  config.seed = 0
  config.num_seeds = 1  # S > 1: a stability study of S independently seeded trainings, reported per seed.
  config.seed_scope = "all"  # all: every stage retrained per seed | stage2: one shared stage-1 AE (ae_vae)
  config.data = data_config()
  config.ae = ml_collections.ConfigDict()  # Stage-1 autoencoder (hierarchical pipelines only).
  config.vae = ml_collections.ConfigDict()  # The classifying model.
  config.score = score_config()
  # supervised_cnn: also train the supervised CNN reference (config.supervised_cnn) on the labels (k-fold).
  config.eval = ml_collections.ConfigDict(dict(supervised_ceiling=True, supervised_cnn=False, eval_batch_size=256,
                                               plots=True))
  config.supervised_cnn = supervised_cnn_config()
  return config


def apply_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to run end to end in seconds (tests, CI)."""
  config.data.default_n_labelled = 300
  config.data.default_n_unlabelled = 400
  config.data.normalizer_sample = 200
  config.score.fit_size = 300
  for stage in (config.ae, config.vae, config.supervised_cnn):
    if "train" in stage:
      stage.train.steps = 6
      stage.train.batch_size = 32
      stage.train.checkpoint_every = 3
      stage.train.log_every = 2
  return config


# The shared fix for latents that keep the morphology (README "What changed and why"), one piece each, so every
# design of the V+M family and the hierarchical ones uses the same ones, and each can be dropped to measure it:
#   shape:    inputs normalised per object (data/normalize.py `asinh_shape`): shape separated from flux;
#   window:   the reconstruction weighted towards the central object (losses `recon_window`, sigma 10 px);
#   dihedral: each training image under a random symmetry of the square (no capacity spent on orientation);
#   labelled: the labelled set's images are trained on too (never its labels).
ROBUST_PIECES = ("shape", "window", "dihedral", "labelled")
WINDOW_SIGMA_PX = 10.0
# Config arguments of the designs that take the fix: `study` = as the study (and main before it) had it,
# `no_<piece>` = the fix without that piece.
ROBUST_ARGUMENTS = ("study",) + tuple(f"no_{piece}" for piece in ROBUST_PIECES)


def robust_pieces(args: set[str]) -> tuple[str, ...]:
  """The pieces of the fix a config's arguments ask for: all but the `no_<piece>` ones; none for `study`."""
  if "study" in args:
    return ()
  return tuple(piece for piece in ROBUST_PIECES if f"no_{piece}" not in args)


def apply_robust_inputs(config: ml_collections.ConfigDict, image_stages: tuple[str, ...],
                        pieces: tuple[str, ...] = ROBUST_PIECES) -> ml_collections.ConfigDict:
  """Applies the pieces of the fix to `config` (its image stages: those trained on pixels, e.g. ('ae',))."""
  if "shape" in pieces:
    config.data.normalization = "asinh_shape"
  if "labelled" in pieces:
    config.data.train_on_labelled_images = True
  for name in image_stages:
    stage = config[name]
    if "window" in pieces:
      weight = stage.loss.get("recon_mse", 1.0)
      loss = {k: v for k, v in stage.loss.to_dict().items() if k != "recon_mse"}
      stage.loss = ml_collections.ConfigDict(dict(recon_window=weight, **loss))
      stage.loss_options.recon_window = ml_collections.ConfigDict(dict(sigma_px=WINDOW_SIGMA_PX))
    if "dihedral" in pieces:
      stage.train.augment = "dihedral"
  return config


def parse_arg(arg: str | None, accepted: tuple[str, ...]) -> set[str]:
  """`configs/x.py:smoke,star` -> {'smoke', 'star'}; a word the config does not accept fails, listing them
  (a typo such as `:smok` would otherwise run the full-size job)."""
  words = {a.strip() for a in (arg or "").split(",") if a.strip()}
  unknown = sorted(words - set(accepted))
  if unknown:
    raise ValueError(f"unknown config argument(s) {unknown}; valid: {sorted(accepted)}")
  return words


def conv_vae_config(steps: int, latent_dim: int = 2, mu_activation: str = "none") -> ml_collections.ConfigDict:
  vae = ml_collections.ConfigDict()
  vae.model = "conv_vae"
  vae.model_kwargs = ml_collections.ConfigDict(dict(
      latent_dim=latent_dim, channels=(32, 64, 128, 256), activation="relu", norm="none",
      mu_activation=mu_activation, eps_scale=1.0))
  vae.loss = ml_collections.ConfigDict(dict(recon_mse=1.0, kl=1.0))
  vae.loss_options = ml_collections.ConfigDict()
  vae.train = train_config(steps)
  return vae


def dense_vae_config(steps: int, latent_dim: int = 2, eps_scale: float = 0.1) -> ml_collections.ConfigDict:
  vae = ml_collections.ConfigDict()
  vae.model = "dense_vae"
  vae.model_kwargs = ml_collections.ConfigDict(dict(
      in_dim=30, hidden=30, latent_dim=latent_dim, eps_scale=eps_scale, out_activation="tanh"))
  vae.loss = ml_collections.ConfigDict(dict(recon_mse=1.0, kl=1.0))
  vae.loss_options = ml_collections.ConfigDict()
  vae.train = train_config(steps, batch_size=256, learning_rate=3e-3)
  return vae


def vae_penalty_config(arg: str | None, accepted: tuple[str, ...], term: str, options: dict,
                       mu_activation: str = "none"):
  """Vr(X)+M: the conv VAE with a revised latent penalty in place of the KL, then manifold learning; the shared
  fix on its inputs and reconstruction (`apply_robust_inputs`) unless `:study`."""
  accepted = tuple(accepted) + tuple(a for a in ROBUST_ARGUMENTS if a not in accepted)
  config = base_config()
  config.pipeline = "vae_manifold"
  config.vae = conv_vae_config(steps=1200, mu_activation=mu_activation)
  config.vae.loss = ml_collections.ConfigDict({"recon_mse": 1.0, term: 1.0})
  config.vae.loss_options = ml_collections.ConfigDict({term: options} if options else {})
  config.score = score_config("isomap")
  apply_robust_inputs(config, ("vae",), robust_pieces(parse_arg(arg, accepted)))
  return finish(config, arg, accepted)


def finish(config: ml_collections.ConfigDict, arg: str | None,
           accepted: tuple[str, ...] = ("smoke",)) -> ml_collections.ConfigDict:
  """Checks the `:arguments` against the words this config accepts, then applies `smoke`."""
  args = parse_arg(arg, accepted)
  if "smoke" in args:
    apply_smoke(config)
  return config
