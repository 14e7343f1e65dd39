"""A config checked before any work: every setting against a rule, every name through its registry, one line.

A rule is `rule(value) -> problem | None`, attached to a dotted path pattern (`fnmatch`: `*.train.steps` is
the `steps` of every train block wherever it sits). The run registry entry (`experiment.Run.settings`) says
which rules its config obeys; `SETTINGS` here are the ground floor's (data, stage blocks, train blocks,
evaluation), the wings add their own beside their registry entries. A numeric setting no rule names is still
checked to be finite, so a setting added later is never unchecked.

Stage blocks (`model`, `model_kwargs`, `loss`, `loss_options`, `train`) are checked whole by `check_stage`: the
registry model is built and one training step traced abstractly (`jax.eval_shape`: nothing runs, nothing is
compiled), so unknown activations, loss options, out-of-range latent units or a loss needing outputs the model
does not have fail here, through the registries that would reject them later.

Names of choices are read from the registries when a config is checked, so a model, loss term, score method or
pipeline added to its registry is valid at once. Every problem found goes into one `ConfigError` line.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ml_collections

from stargal_jax import registry

Rule = Callable[[Any], "str | None"]  # the problem with a value, or None when it is fine
Check = Callable[..., None]  # a check of the whole config (raises ConfigError)


class ConfigError(ValueError):
  """A setting a run cannot use; the message is one line naming every offending setting."""


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None) -> Rule:
  """An int (not a bool) in [low, high]."""
  bounds = " and ".join(text for text in (f">= {low}" if low is not None else "",
                                          f"<= {high}" if high is not None else "") if text)

  def rule(value):
    if not isinstance(value, int) or isinstance(value, bool):
      return f"must be an integer{' ' + bounds if bounds else ''}"
    if (low is not None and value < low) or (high is not None and value > high):
      return f"must be an integer {bounds}"
    return None
  return rule


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Rule:
  """A finite real number between low and high (each end closed unless `*_open`)."""
  if low is not None and high is not None:
    where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
  elif low is not None:
    where = f"{'>' if low_open else '>='} {low:g}"
  elif high is not None:
    where = f"{'<' if high_open else '<='} {high:g}"
  else:
    where = ""

  def rule(value):
    if not _is_number(value) or not math.isfinite(value):
      return f"must be a finite number{' ' + where if where else ''}"
    if low is not None and (value < low or (low_open and value == low)):
      return f"must be {where}"
    if high is not None and (value > high or (high_open and value == high)):
      return f"must be {where}"
    return None
  return rule


def boolean(value) -> str | None:
  return None if isinstance(value, bool) else "must be True or False"


def choice(valid: Mapping | Sequence | Callable[[], Any], what: str) -> Rule:
  """One of `valid` (a registry, a sequence, or a function returning either: read when checked)."""

  def rule(value):
    names = valid() if callable(valid) else valid
    try:
      registry.check_choice(value, tuple(names), what)
    except registry.UnknownName as error:
      return str(error)
    return None
  return rule


def each(item: Rule, nonempty: bool = True) -> Rule:
  """A sequence whose every item obeys `item`."""

  def rule(value):
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
      return "must be a sequence"
    if nonempty and not value:
      return "must not be empty"
    for i, element in enumerate(value):
      problem = item(element)
      if problem:
        return f"item {i} ({element!r}) {problem}"
    return None
  return rule


def increasing(value) -> str | None:
  """A sequence of finite numbers, strictly increasing (bin edges)."""
  problem = each(number(), nonempty=False)(value)
  if problem:
    return problem
  if any(b <= a for a, b in zip(value, value[1:])):
    return "must be strictly increasing"
  return None


def letters_of(alphabet: str, what: str) -> Rule:
  """A non-empty string of distinct letters from `alphabet` (e.g. bands 'gri')."""

  def rule(value):
    if not isinstance(value, str) or not value:
      return f"must be a non-empty string of {what} ({alphabet})"
    unknown = sorted(set(value) - set(alphabet))
    if unknown or len(set(value)) != len(value):
      return f"must be distinct {what} from {alphabet!r}; got {value!r}"
    return None
  return rule


def raises(check: Callable[[Any], Any]) -> Rule:
  """A rule from a function of the value that raises ValueError when it is wrong (a data-layer checker)."""

  def rule(value):
    try:
      check(value)
    except (ValueError, TypeError) as error:
      return str(error)
    return None
  return rule


# ---------------------------------------------------------------------------------------------
# The ground floor's settings.

def _sim_params_rules() -> dict[str, Rule]:
  """One rule per simulator parameter: the value, with the other parameters at their defaults, passes SimParams'
  own validation (the whole set is validated again when the simulation is built)."""
  import dataclasses
  from stargal_jax.simulate import SimParams

  def field_rule(name: str) -> Rule:
    return raises(lambda value: SimParams.from_dict({name: value}))
  return {f"data.sim_params.{f.name}": field_rule(f.name) for f in dataclasses.fields(SimParams)}


def _data_rules() -> dict[str, Rule]:
  from stargal_jax.data import formats, normalize
  return {
      "seed": integer(0, 2**31 - 1),
      "num_seeds": integer(1),
      "data.labelled": lambda v: None if isinstance(v, str) else "must be a path or glob (a string)",
      "data.unlabelled": lambda v: None if isinstance(v, str) else "must be a path or glob (a string)",
      "data.star_fraction": number(0, 1, low_open=True, high_open=True),
      "data.nan_policy": choice(formats.NAN_POLICIES, "nan policy"),
      "data.skip_bad_files": boolean,
      "data.train_on_labelled_images": boolean,
      "data.normalization": choice(normalize.NORMALIZERS, "normalization"),
      "data.normalizer_sample": integer(1),
      "data.default_n_labelled": integer(1),
      "data.default_n_unlabelled": integer(1),
      "data.default_seed": integer(0, 2**31 - 1),
      "data.workers": integer(0),
      "data.mag_bins": increasing,
      "data.duplicates": choice(formats.DUPLICATE_POLICIES, "duplicates policy"),
      "data.max_records_per_file": raises(formats.check_max_records),
      "data.pixel_bounds": raises(formats.check_pixel_bounds),
      **_sim_params_rules(),
  }


def _stage_rules() -> dict[str, Rule]:
  from stargal_jax import inputs, losses, models, train
  return {
      "*.model": choice(models.MODELS, "model"),
      "*.model_kwargs.latent_dim": integer(1),
      "*.model_kwargs.in_dim": integer(1),
      "*.model_kwargs.hidden": integer(1),
      "*.model_kwargs.channels": each(integer(1)),
      "*.model_kwargs.stem_channels": integer(1),
      "*.model_kwargs.crop": integer(1),  # its range against the image (even margin) is the model's, traced
      "*.loss_options.*.label_smoothing": number(0, 1),
      "*.model_kwargs.eps_scale": number(0),
      "*.model_kwargs.leaky_slope": number(0),
      "*.loss.*": number(0),  # a term's weight; 0 leaves the term out
      "*.loss_options.*.units": each(integer()),
      "*.loss_options.*.m": number(0),
      "*.loss_options.*.s": number(0, low_open=True),
      "*.loss_options.*.sigma": number(0, low_open=True),
      "*.loss_options.*.sigma_px": number(0, low_open=True),
      "*.loss_options.*.order": integer(1),
      "*.loss_options.*.prior": choice(losses.PRIORS, "prior"),
      "*.loss_options.*.scales": each(number(0, low_open=True)),
      "*.loss_options.*.*_weight": number(0),
      "*.train.steps": integer(1),
      "*.train.batch_size": integer(1),
      "*.train.learning_rate": number(0, low_open=True),
      "*.train.grad_clip": number(0, low_open=True),
      "*.train.checkpoint_every": integer(1),
      "*.train.log_every": integer(1),
      "*.train.augment": choice(inputs.AUGMENTATIONS, "augmentation"),
      "*.train.lr_schedule": choice(lambda: train.LR_SCHEDULES, "learning-rate schedule"),
      "eval.eval_batch_size": integer(1),
      "eval.supervised_ceiling": boolean,
      "eval.supervised_cnn": boolean,
      "eval.plots": boolean,
  }


@functools.cache
def ground_settings() -> dict[str, Rule]:
  """Rules of the settings every run shares (top level, `data`, stage and train blocks, `eval`)."""
  return {**_data_rules(), **_stage_rules()}


# ---------------------------------------------------------------------------------------------
# The engine.

def leaves(config, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted path, value) of every setting; a sequence is one setting."""
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaves(value, path + ".")
    else:
      yield path, value


def _generic(value) -> str | None:
  """What holds for every setting: numbers, alone or in sequences, are finite."""
  values = value if isinstance(value, (tuple, list)) else (value,)
  if any(_is_number(v) and not math.isfinite(v) for v in values):
    return "must be finite"
  return None


def rules_for(path: str, settings: Mapping[str, Rule]) -> list[Rule]:
  return [rule for pattern, rule in settings.items() if fnmatch.fnmatchcase(path, pattern)]


def setting_problems(config, settings: Mapping[str, Rule]) -> list[str]:
  """`config.PATH = VALUE: problem` for every setting breaking its rules (or, unnamed, the generic one)."""
  problems = []
  for path, value in leaves(config):
    for rule in rules_for(path, settings) or [_generic]:
      problem = rule(value)
      if problem:
        problems.append(f"config.{path} = {value!r}: {problem}")
        break
  return problems


def fail(problems: Sequence[str]) -> None:
  if problems:
    raise ConfigError("; ".join(dict.fromkeys(problems)))


def check_config(config, settings: Mapping[str, Rule], checks: Sequence[Check] = ()) -> None:
  """Every setting against `settings`, then each whole-config check; one `ConfigError` naming all problems.

  The whole-config checks run only when the settings are fine (they may rely on them)."""
  fail(setting_problems(config, settings))
  problems = []
  for check in checks:
    try:
      check(config)
    except ConfigError as error:
      problems.append(str(error))
  fail(problems)


def check_both_sources(config) -> None:
  """config.data names both sets or neither (the embedded default data)."""
  if bool(config.data.labelled) != bool(config.data.unlabelled):
    raise ConfigError("config.data.labelled and config.data.unlabelled: give both (or neither, for the embedded "
                      "default data)")


# ---------------------------------------------------------------------------------------------
# Stage blocks, traced abstractly.

IMAGE_INPUT = (64, 64, 5)  # one model input image, NHWC


def _canonical(value) -> str:
  return json.dumps(value, sort_keys=True, default=list)


# The train block's numbers (checked by their own rules) shape nothing a step traces: one stands for all, so the
# full and `:smoke` sizes of a stage share a trace.
_TRACE_TRAIN = ml_collections.ConfigDict(dict(learning_rate=1e-3, grad_clip=10.0, steps=1))


@functools.lru_cache(maxsize=64)
def _traced_stage(model: str, block_json: str, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
  """Shapes of one model's outputs, from one training step traced on abstract inputs (pure, memoised: the
  same stage is traced once per process). `block_json`: the stage's model_kwargs, loss and loss_options."""
  import jax
  import jax.numpy as jnp

  from stargal_jax import losses, models, train

  block = json.loads(block_json)
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in block["model_kwargs"].items()}

  def step(key):
    network = models.build_model(model, kwargs, key)
    graphdef, state, step_fn = train.initial_state(network, _TRACE_TRAIN, block["loss"], block["loss_options"],
                                                   key)
    x = jnp.zeros((2,) + tuple(input_shape), jnp.float32)
    batch = {"x": x}
    if losses.LABEL_TERMS & {k for k, w in block["loss"].items() if float(w) > 0}:
      batch["label"] = jnp.zeros((2,), jnp.float32)  # a classifier stage's batches carry (pseudo-)labels
    step_fn(state, batch, key)
    outputs, _ = models.apply_model(graphdef, state["params"], state["model_state"], x, key=key, train=True)
    return outputs

  outputs = jax.eval_shape(step, jax.random.key(0))
  return {name: tuple(v.shape[1:]) for name, v in outputs.items() if hasattr(v, "shape")}


def check_stage(config, path: str, input_shape: Sequence[int] = IMAGE_INPUT,
                model: str | None = None) -> dict[str, tuple[int, ...]]:
  """The stage block at `path` (its `model`, or `model` given) builds, and one training step of it traces on
  inputs of `input_shape`; returns the shapes of its outputs per object. Raises ConfigError naming the block."""
  block = config
  for part in path.split("."):
    block = block.get(part) if isinstance(block, ml_collections.ConfigDict) else None
  missing = [k for k in ("model_kwargs", "loss", "loss_options", "train") + (() if model else ("model",))
             if block is None or k not in block]
  if missing:
    raise ConfigError(f"config.{path}: a trained stage needs {', '.join(missing)}")
  weights = block.loss.to_dict()
  if not any(float(w) > 0 for w in weights.values()):
    raise ConfigError(f"config.{path}.loss = {weights}: at least one loss term needs a weight > 0")
  unused = sorted(set(block.loss_options.keys()) - set(weights))
  if unused:
    raise ConfigError(f"config.{path}.loss_options names {unused}, which config.{path}.loss does not weight "
                      f"({sorted(weights)})")
  name = model or block.model
  try:
    traced = {k: block[k].to_dict() for k in ("model_kwargs", "loss", "loss_options")}
    return _traced_stage(name, _canonical(traced), tuple(int(n) for n in input_shape))
  except (ValueError, KeyError, TypeError, AttributeError) as error:
    # A KeyError's str() quotes its message; the first line is the reason (jax appends its own notes).
    keyed = isinstance(error, KeyError) and error.args and isinstance(error.args[0], str)
    text = error.args[0] if keyed else str(error)
    text = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    raise ConfigError(f"config.{path} (model {name!r}): {text}") from None


def latent_dim(outputs: Mapping[str, tuple[int, ...]]) -> int:
  """The size of the latents a stage gives an object (its `mu`, or its code `z`)."""
  return int((outputs.get("mu") or outputs["z"])[-1])
