"""`run(config, workdir)`: the whole job behind `launch.py`, importable from notebooks and tests.

`RUNS` is the one registry of runs: `config.pipeline` -> a `Run` whose `job(config, workdir) -> metrics` does
everything. The classification runs are one per entry of `classify.pipelines.PIPELINES` (which says what each
pipeline trains, encodes with and vmaps over seeds); the segmentation wing adds its two jobs. Each entry also
declares what its config must obey (`settings`, `checks`, `data_checks`: `config_checks`), which of its
settings only change the scoring (`scoring_keys`) and how its seeds are laid out in checkpoints (`seed_layout`).

Before the job, in this order: the config is checked; the workdir is locked (`run_identity.workdir_lock`); the
config is compared with what trained the workdir's checkpoints; the stores are opened and checked against the
config (batch sizes, both classes present); the data are compared; `run_identity.json` and `config.json` are
written. Any failure stops the run there, on one line (launch.py prints it without a traceback).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping

import ml_collections

from stargal_jax import config_checks as cc
from stargal_jax import distributed, inputs, models, registry, run_identity, train
from stargal_jax.classify import job as classify_job
from stargal_jax.classify import pipelines, scoring
from stargal_jax.data import formats
from stargal_jax.segment import jobs as segment_jobs
from stargal_jax.segment import labelling, pixel_kmeans

DataCheck = Callable[[ml_collections.ConfigDict, inputs.Stores], None]
# What a user can cause and fix, each with a message that says what and where: launch.py prints them on one line.
USER_ERRORS = (cc.ConfigError, registry.UnknownName, run_identity.RunIdentityError, run_identity.WorkdirBusy,
               formats.DataFormatError, FileNotFoundError, train.CheckpointError, train.TrainingDiverged,
               NotImplementedError)


@dataclasses.dataclass(frozen=True)
class Run:
  job: Callable[..., dict]  # (config, workdir: Path) -> the metrics written to workdir/metrics.json
  multiprocess: bool  # runs as one program over several processes (launch.py --multihost)
  summary: str
  settings: Mapping[str, cc.Rule]  # rule per setting path pattern (config_checks)
  checks: tuple[cc.Check, ...] = ()  # whole-config checks, before any work
  data_checks: tuple[DataCheck, ...] = ()  # once the stores are open, before training
  scoring_keys: tuple[str, ...] = ()  # setting patterns that change the scoring only (re-scored, not retrained)
  seed_layout: Callable[[ml_collections.ConfigDict], str] | None = None  # None: num_seeds, seed_scope unused


# ---------------------------------------------------------------------------------------------
# Classification runs.

CLASSIFICATION_SETTINGS = {
    "seed_scope": cc.choice(pipelines.SEED_SCOPES, "seed_scope"),
    "score.method": cc.choice(lambda: scoring.SCORE_METHODS, "score method"),
    "score.unit": cc.integer(0),
    "score.n_neighbors": cc.integer(1),
    "score.fit_size": cc.integer(1),
    # The supervised CNN reference (eval.supervised_cnn): k-fold on the labelled images' labels.
    "supervised_cnn.folds": cc.integer(2),
    "supervised_cnn.max_shift_px": cc.number(0),
}
# The bootstrapped design's own settings (configs/bootstrap.py, classify.bootstrap).
BOOTSTRAP_SETTINGS = {
    "bootstrap.pseudo.min_snr": cc.number(0, low_open=True),
    "bootstrap.pseudo.cut": cc.number(),
    "bootstrap.pseudo.margin": cc.number(0),
    "bootstrap.pseudo.galaxy_margin": cc.number(0),
    "bootstrap.pseudo.seeing_aware": cc.boolean,
    "bootstrap.pseudo.seeing_quantile": cc.number(0, 1),
    "bootstrap.pseudo.max_galaxy_chi2": cc.number(0, low_open=True),
    "bootstrap.pseudo.preselect_fraction": cc.number(0, 1, low_open=True),
    "bootstrap.pseudo.max_fit": cc.integer(5),  # photometry's PSF model needs at least 5 stars
    "bootstrap.pseudo.correlated_noise": cc.boolean,
    "bootstrap.degrade.shrink_exponent_max": cc.number(0),
    "bootstrap.degrade.max_scale": cc.number(1),
    "bootstrap.degrade.broaden": cc.boolean,
    "bootstrap.degrade.max_shift_px": cc.number(0),
    "bootstrap.degrade.keep_bright_fraction": cc.number(0, 1),
    "classifier.ensemble": cc.integer(1),
    "bootstrap.rounds": cc.integer(1),
    "bootstrap.student_confident_logit": cc.number(0),
    "bootstrap.student_real_fraction": cc.number(0, 1, high_open=True),
    "bootstrap.stop_changed_fraction": cc.number(0, 1),
}
PIPELINE_SETTINGS = {"bootstrap": BOOTSTRAP_SETTINGS}  # pipeline -> the settings only it has
# What the label-free score and the evaluation read: changing them re-scores the trained latents.
CLASSIFICATION_SCORING = ("score.*", "data.star_fraction", "data.mag_bins", "eval.*")


def classification_stages(config, pipeline_name: str | None = None) -> dict[str, dict]:
  """Each stage the pipeline trains, traced abstractly on its inputs (a later encoder stage on the codes of the
  one before); the score's latent unit within the latents. Returns the output shapes per stage."""
  pipeline = pipelines.get_pipeline(pipeline_name or config.pipeline)
  shapes: dict[str, dict] = {}
  for stage in pipeline.stages:
    position = pipeline.encoder.index(stage) if stage in pipeline.encoder else 0
    upstream = shapes.get(pipeline.encoder[position - 1]) if position > 0 else None
    shapes[stage] = cc.check_stage(config, stage, upstream["z"] if upstream else cc.IMAGE_INPUT)
  dim = cc.latent_dim(shapes[pipeline.encoder[-1]])
  if config.score.method == "latent_unit" and config.score.unit >= dim:
    raise cc.ConfigError(f"config.score.unit = {config.score.unit}: must be < {dim}, the latent size of "
                         f"config.{pipeline.encoder[-1]}")
  return shapes


def supervised_cnn_stage(config) -> None:
  """With eval.supervised_cnn, its stage block traced like a trained stage."""
  if config.eval.get("supervised_cnn", False):
    cc.check_stage(config, "supervised_cnn")


def supervised_cnn_fits(config, opened: inputs.Stores) -> None:
  """With eval.supervised_cnn, a batch fits in each fold's training part of the labelled set."""
  if not config.eval.get("supervised_cnn", False):
    return
  folds, n = int(config.supervised_cnn.folds), len(opened.labelled)
  smallest = n - -(-n // folds)  # the training part of the largest held-out fold
  problems = []
  if folds > n:
    problems.append(f"config.supervised_cnn.folds = {folds}: must be <= the {n} labelled objects")
  elif config.supervised_cnn.train.batch_size > smallest:
    problems.append(f"config.supervised_cnn.train.batch_size = {config.supervised_cnn.train.batch_size}: must be "
                    f"<= {smallest}, the labelled objects a fold trains on ({n} in {opened.source}, {folds} folds)")
  cc.fail(problems)


def _check_seed_scope(config) -> None:
  try:
    pipelines.check_seed_scope(config)
  except ValueError as error:
    raise cc.ConfigError(f"config.seed_scope = {config.seed_scope!r}: {error}") from None


def seed_layout(config) -> str:
  """How a seed study's checkpoints are laid out (the part of num_seeds and seed_scope that binds them)."""
  if int(config.num_seeds) > 1 and config.seed_scope == "stage2":
    return f"one stage 1, stage 2 of num_seeds={int(config.num_seeds)} seeds trained as one program"
  return "each seed trained on its own, in its own checkpoints"


def training_set_fits(stage_paths: Callable[[ml_collections.ConfigDict], list[str]],
                      held_back: Callable[[ml_collections.ConfigDict], int] = lambda config: 0) -> DataCheck:
  """A batch of each trained stage fits in the training set (the unlabelled set, less what is held back)."""

  def check(config, opened: inputs.Stores) -> None:
    n = len(opened.unlabelled) - held_back(config)
    problems = []
    for path in stage_paths(config):
      block = config
      for part in path.split("."):
        block = block[part]
      if block.train.batch_size > n:
        problems.append(f"config.{path}.train.batch_size = {block.train.batch_size}: must be <= the training set "
                        f"({n} unlabelled objects{' not held back' if held_back(config) else ''} in "
                        f"{opened.source})")
    cc.fail(problems)
  return check


def both_classes(config, opened: inputs.Stores) -> None:
  """The metrics (AUC, purity, completeness) need galaxies and point-like objects in the labelled set."""
  galaxies = int(formats.is_galaxy(opened.labelled.index["label"]).sum())
  point_like = len(opened.labelled) - galaxies
  if not galaxies or not point_like:
    where = config.data.labelled or opened.source
    raise cc.ConfigError(f"the labelled set ({where}) holds {galaxies} GALAXY and {point_like} STAR/QSO objects: "
                         f"the metrics (AUC, purity, completeness) need both classes")


_classifier_stages = lambda config: list(pipelines.get_pipeline(config.pipeline).stages)


def _classification_run(name: str, p: pipelines.Pipeline) -> Run:
  return Run(classify_job.run, multiprocess=True, summary=f"classification: {name} ({', '.join(p.stages)})",
             settings={**cc.ground_settings(), **CLASSIFICATION_SETTINGS, **PIPELINE_SETTINGS.get(name, {})},
             checks=(cc.check_both_sources, _check_seed_scope, classification_stages, supervised_cnn_stage),
             data_checks=(training_set_fits(_classifier_stages), both_classes, supervised_cnn_fits),
             scoring_keys=CLASSIFICATION_SCORING, seed_layout=seed_layout)


# ---------------------------------------------------------------------------------------------
# Segmentation runs.

BANDS = "ugriz"
SEGMENTATION_SETTINGS = {
    "seg.compare_models": cc.each(cc.choice(models.MODELS, "model")),
    "seg.holdout_images": cc.integer(0),
    "seg.hypercolumn_layers": cc.each(cc.integer()),
    "seg.detection_share": cc.number(0, 1, high_open=True),
    "seg.detection_sigma_px": cc.number(0, low_open=True),
    "seg.k": cc.integer(2),
    "seg.ks": cc.each(cc.integer(2)),
    "seg.sample_pixels": cc.integer(1),
    "seg.fit_images": cc.integer(0),
    "seg.kmeans_algorithm": cc.choice(pixel_kmeans.KMEANS_ALGORITHMS, "k-means algorithm"),
    "seg.rule": cc.choice(pixel_kmeans.FOREGROUND_RULES, "foreground rule"),
    "seg.snr_threshold": cc.number(),
    "seg.snr_bands": cc.letters_of(BANDS, "bands"),
    "seg.min_area": cc.integer(1),
    "seg.connectivity": cc.choice(labelling.CONNECTIVITY_STRUCTURES, "connectivity"),
    "seg.centre_radius": cc.number(0, low_open=True),
    "seg.chunk": cc.integer(1),
    "seg.score_images": cc.integer(0),
    "seg.sep_bands": cc.each(cc.letters_of(BANDS, "bands")),
    "seg.sep_thresholds": cc.each(cc.number(0, low_open=True)),
    "seg.sep_minarea": cc.integer(1),
    "seg.mag_bins": cc.increasing,
    "seg.mask_dilate": cc.integer(0),
    "seg.classifier_pipeline": cc.choice(lambda: pipelines.PIPELINES, "classifier pipeline"),
    "seg.n_plot": cc.integer(0),
    "seg.deblend": cc.boolean,
    "seg.deblend_levels": cc.integer(2),
    "seg.deblend_contrast": cc.number(0, 1),
    "seg.deblend_min_area": cc.integer(1),
    "seg.deblend_floor": cc.number(0),
    "seg.faint": cc.boolean,
    "seg.faint_peak": cc.number(0, low_open=True),
    "seg.faint_low": cc.number(0, low_open=True),
    "seg.edges": cc.boolean,
    "seg.edge_level": cc.number(0, low_open=True),
    "seg.edge_peak_fraction": cc.number(0, 1),
    "seg.edge_min_peak": cc.number(0),
    "seg.crowding": cc.boolean,
    "seg.flood_images": cc.integer(1),
    "seg.flood_quantile": cc.number(0, 1),
    "seg.local_box": cc.integer(4, 64),
}
# The segmentation job trains its AEs (seg.ae, seg.model, seg.compare_models, seg.holdout_images); everything after
# (hypercolumns, k-means, labelling, scoring, SEP) is fitted again on every run from the trained AEs.
SEGMENTATION_SCORING = CLASSIFICATION_SCORING + tuple(f"seg.{key}" for key in (
    "hypercolumn_layers", "detection_share", "detection_sigma_px", "k", "ks", "sample_pixels", "fit_images",
    "kmeans_algorithm", "rule", "snr_threshold", "snr_bands", "min_area", "connectivity", "centre_radius", "chunk",
    "score_images", "sep_bands", "sep_thresholds", "sep_minarea", "mag_bins", "mask_dilate",
    "classifier_pipeline", "deblend*", "faint*", "edge*", "crowding", "flood_*", "local_box"))
# seg_cvae trains its classifier on the masked images: the masks' settings bind its checkpoints too.
SEG_CVAE_SCORING = CLASSIFICATION_SCORING + ("seg.ks", "seg.score_images", "seg.sep_*", "seg.mag_bins")


def segmentation_models(config) -> list[str]:
  """The AEs a segmentation run trains: seg.compare_models and seg.model (the features), in order."""
  if config.pipeline == "segmentation":
    return list(dict.fromkeys([*config.seg.compare_models, config.seg.model]))
  return [config.seg.model]


def segmentation_stages(config) -> None:
  """seg.ae traced with each model trained; the hypercolumn layers among the features model's maps; k in reach."""
  import jax
  import jax.numpy as jnp

  for model in segmentation_models(config):
    cc.check_stage(config, "seg.ae", cc.IMAGE_INPUT, model=model)
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.seg.ae.model_kwargs.to_dict().items()}

  def features(key):
    network = models.build_model(config.seg.model, kwargs, key)
    graphdef, params, state = models.split_model(network)
    return models.apply_model(graphdef, params, state, jnp.zeros((1,) + cc.IMAGE_INPUT), return_features=True)[0]

  n_maps = len(jax.eval_shape(features, jax.random.key(0))["features"])
  bad = [i for i in config.seg.hypercolumn_layers if not -n_maps <= i < n_maps]
  problems = [f"config.seg.hypercolumn_layers = {tuple(config.seg.hypercolumn_layers)}: {bad} out of range for "
              f"the {n_maps} feature maps of {config.seg.model!r}"] if bad else []
  ks = sorted({int(config.seg.k), *(int(k) for k in config.seg.ks)})
  if config.seg.sample_pixels < ks[-1]:
    problems.append(f"config.seg.sample_pixels = {config.seg.sample_pixels}: must be >= the largest k ({ks[-1]})")
  cc.fail(problems)


def _classifier_checks(config) -> None:
  """seg_cvae's classification arm: the classification checks with its classifier pipeline."""
  classifier = ml_collections.ConfigDict(config.to_dict())
  classifier.pipeline = config.seg.classifier_pipeline
  _check_seed_scope(classifier)
  classification_stages(classifier)


def _holdout(config) -> int:
  return int(config.seg.holdout_images) if config.pipeline == "segmentation" else 0


def _holdout_fits(config, opened: inputs.Stores) -> None:
  if _holdout(config) >= len(opened.unlabelled):
    raise cc.ConfigError(f"config.seg.holdout_images = {config.seg.holdout_images}: must be < the "
                         f"{len(opened.unlabelled)} unlabelled objects")


_SEGMENTATION = {**cc.ground_settings(), **CLASSIFICATION_SETTINGS, **SEGMENTATION_SETTINGS}

RUNS: dict[str, Run] = {
    **{name: _classification_run(name, p) for name, p in pipelines.PIPELINES.items()},
    "segmentation": Run(segment_jobs.run_segmentation, multiprocess=False,
                        summary="hypercolumn k-means segmentation, scored against truth beside SEP",
                        settings=_SEGMENTATION, checks=(cc.check_both_sources, segmentation_stages),
                        data_checks=(_holdout_fits, training_set_fits(lambda config: ["seg.ae"], _holdout)),
                        scoring_keys=SEGMENTATION_SCORING),
    "seg_cvae": Run(segment_jobs.run_seg_cvae, multiprocess=False,
                    summary="cvae classification with and without the segmentation's neighbours masked",
                    settings=_SEGMENTATION, checks=(cc.check_both_sources, segmentation_stages, _classifier_checks),
                    data_checks=(training_set_fits(lambda config: ["seg.ae", *pipelines.get_pipeline(
                        config.seg.classifier_pipeline).stages]), both_classes),
                    scoring_keys=SEG_CVAE_SCORING, seed_layout=seed_layout),
}


def check_config(config) -> Run:
  """The run registry entry of `config.pipeline`, once `config` passed its checks (ConfigError otherwise)."""
  entry = registry.lookup(RUNS, config.pipeline, "pipeline")
  cc.check_config(config, entry.settings, entry.checks)
  return entry


def run(config, workdir: str | Path) -> dict:
  """Runs `RUNS[config.pipeline]` into `workdir` after the checks above (process 0 checks, locks and records the
  workdir, and writes config.json; every process checks the config and runs the job)."""
  entry = check_config(config)  # before any work
  if distributed.is_multiprocess() and not entry.multiprocess:
    raise NotImplementedError(f"{config.pipeline!r} runs in one process only; drop --multihost.")
  workdir = Path(workdir)
  if not distributed.is_writer():
    return entry.job(config, workdir)
  settings = run_identity.flatten(config.to_dict())
  layout = entry.seed_layout(config) if entry.seed_layout else None
  with run_identity.workdir_lock(workdir, f"running {config.pipeline} in {workdir}"):
    notes: list[str] = []  # said once the data are checked too
    recorded = run_identity.check_config_part(workdir, settings, entry.scoring_keys, layout, say=notes.append)
    opened = inputs.open_stores(config.data)
    problems = []
    for check in entry.data_checks:
      try:
        check(config, opened)
      except cc.ConfigError as error:
        problems.append(str(error))
    cc.fail(problems)
    run_identity.check_data_part(workdir, recorded, opened.identity, entry.scoring_keys)
    for note in notes:
      print(note, flush=True)
    run_identity.record(workdir, settings, entry.scoring_keys, layout, opened.identity, config.pipeline)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    return entry.job(config, workdir)
