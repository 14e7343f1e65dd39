"""One trainer for every model: a jitted pure step over a dict of pytrees, orbax checkpoints, NaN stop, resume.

The train state is a plain dict `{'params', 'model_state', 'opt_state'}` plus the entries of any stateful loss
term (`losses.StatefulTerm`, e.g. WAE-GAN's `critic`, `critic_opt`): the trainer knows no term by name. Batches are
a pure function of the step (`batch_for_step(step)`), and the step's PRNG key is `fold_in(key, step)`, so a run
killed part-way and restarted from its checkpoint follows exactly the same trajectory as an uninterrupted one.
`initial_state` builds the state and step; `restore` reads a finished run's final checkpoint back.

Checkpoint integrity: once orbax has finalised a step, the sha256 of every file of its directory is written
beside them (`CHECKSUM_FILE`) and verified before the step is restored. A resume takes the newest intact step:
a corrupt newer one (truncated, zeroed, a flipped bit) is moved aside with a warning and training continues
from the intact one (batches and keys are functions of the step, so the result is the same); if none is
intact, `CheckpointError` names the directory. A directory written before checksums (no step has one) is
restored unverified, with a warning.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stargal_jax import distributed, losses, models, registry
from stargal_jax.checkpoint_checksums import checksum_problem, step_dirs, write_checksums

Batch = Mapping[str, np.ndarray]


class TrainingDiverged(RuntimeError):
  """A non-finite loss or gradient: training stopped, the last good checkpoint is kept. `step` is the failing
  step (its batch is `batch_for_step(step)`), `seeds` the diverged seeds of a seed study (None for one run)."""

  def __init__(self, message: str, step: int | None = None, seeds: list[int] | None = None):
    super().__init__(message)
    self.step, self.seeds = step, seeds


class CheckpointError(RuntimeError):
  """No intact checkpoint to restore; the message names the directory and what is wrong with each step."""




@dataclasses.dataclass(frozen=True)
class TrainResult:
  graphdef: Any
  params: Any
  model_state: Any
  history: list[dict[str, float]]


# The learning rate over a stage's steps (train.lr_schedule): constant, or cosine decay to 0 at the last step
# (the final parameters, the ones a run keeps, are then not one noisy snapshot of a constant-rate walk).
LR_SCHEDULES: dict[str, Callable[[float, int], optax.ScalarOrSchedule]] = {
    "constant": lambda rate, steps: rate,
    "cosine": lambda rate, steps: optax.cosine_decay_schedule(rate, steps),
}


def make_optimizer(train_config) -> optax.GradientTransformation:
  schedule = registry.lookup(LR_SCHEDULES, train_config.get("lr_schedule", "constant"), "learning-rate schedule")
  rate = schedule(float(train_config.learning_rate), int(train_config.steps))
  return optax.chain(optax.clip_by_global_norm(train_config.grad_clip), optax.adam(rate))


def data_mesh(batch_size: int) -> Mesh:
  """Devices of every process on one 'data' axis (as many as divide the batch, the same number from each
  process): batches are split, parameters replicated."""
  return Mesh(distributed.mesh_devices(batch_size), ("data",))


def shard_batch(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
  """The global batch (the same on every process) split over the 'data' axis."""
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  return {k: distributed.put(v, sharding) for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
  return distributed.put(tree, NamedSharding(mesh, PartitionSpec()))


def _finite_tree(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_step_fn(graphdef, loss_fn: Callable, optimizer: optax.GradientTransformation,
                 transform_outputs: Callable | None = None,
                 stateful_terms: Sequence[losses.StatefulTerm] = ()):
  """Returns the pure `step(train_state, batch, key) -> (train_state, metrics)` (jit it, or vmap it over seeds).

  `transform_outputs(outputs, batch) -> (outputs, batch)` lets a pipeline measure the reconstruction elsewhere
  (e.g. in a frozen AE's feature space) without touching the model or the loss terms. Each stateful term adds
  its context to the loss and updates its own state after the model's step. A non-finite loss or gradient
  leaves the state unchanged and sets `metrics['finite'] = False`, so the host can stop on the last good state.
  """
  term_outputs = tuple(dict.fromkeys(name for term in stateful_terms for name in term.outputs))

  def objective(params, model_state, batch, key, term_context):
    model_key, loss_key = jax.random.split(key)
    outputs, new_model_state = models.apply_model(graphdef, params, model_state, batch["x"], key=model_key,
                                                  train=True)
    if transform_outputs is not None:
      outputs, batch = transform_outputs(outputs, batch)
    total, metrics = loss_fn(outputs, batch, {"key": loss_key, **term_context})
    return total, (metrics, new_model_state, {name: outputs[name] for name in term_outputs})

  def step(train_state, batch, key):
    term_context = {k: v for term in stateful_terms for k, v in term.context(train_state).items()}
    (total, (metrics, new_model_state, outputs)), grads = jax.value_and_grad(objective, has_aux=True)(
        train_state["params"], train_state["model_state"], batch, key, term_context)
    updates, new_opt_state = optimizer.update(grads, train_state["opt_state"], train_state["params"])
    new_state = dict(train_state, params=optax.apply_updates(train_state["params"], updates),
                     model_state=new_model_state, opt_state=new_opt_state)
    grad_norm = optax.tree.norm(grads)
    metrics = dict(metrics, grad_norm=grad_norm)
    for term in stateful_terms:
      entries, term_metrics = term.update(train_state, outputs, key)
      new_state.update(entries)
      metrics.update(term_metrics)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & _finite_tree(new_state["params"])
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, train_state)
    metrics["finite"] = finite
    return new_state, metrics

  return step


def _checkpoint_manager(ckpt_dir: Path, keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(Path(ckpt_dir).absolute(), options=options)


def _usable_step(ckpt_dir: Path, name: str) -> tuple[int | None, bool]:
  """(the newest step to resume from, whether it is verified); corrupt newer steps are moved aside (process 0)
  with a warning. Raises CheckpointError when steps exist and none is intact."""
  steps = step_dirs(ckpt_dir)
  problems = {step: checksum_problem(path) for step, path in sorted(steps.items(), reverse=True)}
  if not steps:
    return None, False
  if all(problem == "no checksums" for problem in problems.values()):  # written before checksums existed
    latest = max(steps)
    _warn(f"[{name}] checkpoints in {ckpt_dir} have no checksums (written before they existed): step {latest} "
          f"is restored unverified")
    return latest, False
  intact = [step for step, problem in problems.items() if problem is None]
  if not intact:
    listed = "; ".join(f"step {step}: {problem}" for step, problem in problems.items())
    raise CheckpointError(f"{ckpt_dir}: no intact checkpoint ({listed}); remove {ckpt_dir} to train this stage "
                          f"from scratch")
  chosen = intact[0]
  for step, problem in problems.items():
    if step > chosen:
      aside = ckpt_dir.parent / f"{ckpt_dir.name}.corrupt" / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
      if distributed.is_writer():
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(steps[step]), str(aside))
      _warn(f"[{name}] checkpoint step {step} in {ckpt_dir} is corrupt ({problem}); moved to {aside}; resuming "
            f"from step {chosen}, the newest intact one")
  distributed.barrier(f"stargal_jax.checkpoints.{ckpt_dir}")
  return chosen, True


def _warn(message: str) -> None:
  logging.warning("%s", message)
  print(f"WARNING {message}", flush=True)


def initial_state(model, train_config, loss_weights: Mapping[str, float], loss_options: Mapping[str, Mapping],
                  key: jax.Array, transform_outputs: Callable | None = None):
  """(graphdef, train_state, pure step function) for one registry model; `key` seeds the stateful terms' state."""
  graphdef, params, model_state = models.split_model(model)
  loss_options = {k: dict(v) for k, v in loss_options.items()}
  loss_fn = losses.make_loss_fn(dict(loss_weights), loss_options)
  optimizer = make_optimizer(train_config)
  train_state = {"params": params, "model_state": model_state, "opt_state": optimizer.init(params)}
  stateful = losses.stateful_terms(loss_weights, loss_options, getattr(model, "latent_dim", None),
                                   train_config.learning_rate)
  for term in stateful:
    train_state.update(term.init(key))
  return graphdef, train_state, make_step_fn(graphdef, loss_fn, optimizer, transform_outputs, stateful)


def restore(model, train_config, loss_weights: Mapping[str, float], loss_options: Mapping[str, Mapping],
            ckpt_dir: str | Path, num_seeds: int | None = None) -> TrainResult:
  """The final checkpoint of a finished training of `model` (params and model state, e.g. batch statistics).

  The abstract train state comes from `initial_state` of the same model and settings, so the tree matches
  what `train` saved, stateful terms included; `num_seeds` adds the leading seed axis of `train_seeds`. Fails,
  naming the directory, when the run did not reach `train_config.steps`.
  """
  ckpt_dir = Path(ckpt_dir).absolute()
  steps = int(train_config.steps)
  graphdef, state, _ = initial_state(model, train_config, loss_weights, loss_options, jax.random.key(0))
  leading = () if num_seeds is None else (int(num_seeds),)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(leading + np.shape(x), np.asarray(x).dtype),
                          distributed.to_host(state))
  saved = step_dirs(ckpt_dir)
  latest = max(saved) if saved else None
  if latest != steps:
    raise FileNotFoundError(f"{ckpt_dir}: no finished stage of {steps} steps (latest checkpoint: {latest})")
  problem = checksum_problem(saved[latest])
  if problem not in (None, "no checksums"):
    raise CheckpointError(f"{ckpt_dir}: the final checkpoint (step {latest}) is corrupt ({problem}); run the "
                          f"training again with the same --workdir: it resumes from the newest intact step")
  manager = ocp.CheckpointManager(ckpt_dir)
  try:
    restored = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
  finally:
    manager.close()
  return TrainResult(graphdef, restored["params"], restored["model_state"], [])


def train(model, train_config, loss_weights: Mapping[str, float], loss_options: Mapping[str, Mapping],
          batch_for_step: Callable[[int], Batch], key: jax.Array, ckpt_dir: Path, name: str,
          transform_outputs: Callable | None = None, mesh: Mesh | None = None,
          describe_step: Callable[[int], str | None] | None = None) -> TrainResult:
  """Trains `model` for `train_config.steps` steps, resuming from `ckpt_dir` when it holds a checkpoint.

  The batch is split over the devices of `mesh` (data parallel, over every process's devices by default);
  parameters are replicated. With several processes, each calls this with the same arguments. Raises
  TrainingDiverged (naming the step and the loss terms) on a non-finite loss or gradient; the checkpoints
  written before that step are kept. `describe_step(step)` (default: `batch_for_step.describe` when the batches
  come from `inputs.batch_schedule`) names the inputs of the failing batch in that message: the trainer itself
  knows nothing of the data.
  """
  describe_step = describe_step or getattr(batch_for_step, "describe", None)
  mesh = mesh or data_mesh(int(train_config.batch_size))
  graphdef, train_state, step_fn = initial_state(model, train_config, loss_weights, loss_options, key,
                                                 transform_outputs)
  train_state, history = _fit(
      jax.jit(step_fn, donate_argnums=(0,)), train_state, lambda t: replicate(t, mesh),
      lambda step: shard_batch(batch_for_step(step), mesh), _key_for_step(key, lambda k: replicate(k, mesh)),
      train_config, ckpt_dir, name, describe_step=describe_step)
  return TrainResult(graphdef, train_state["params"], train_state["model_state"], history)


def _key_for_step(key, place):
  """Step keys `fold_in(key, step)`; with several processes placed as global arrays like the state (`place`)."""
  if distributed.is_multiprocess():
    return lambda step: place(jax.random.fold_in(key, step))
  return lambda step: jax.random.fold_in(key, step)


def seed_mesh(num_seeds: int) -> Mesh:
  """Devices of every process on one 'seed' axis (as many as divide the number of seeds, the same number from
  each process): one group of seeds each."""
  return Mesh(distributed.mesh_devices(num_seeds), ("seed",))


def train_seeds(build: Callable[[jax.Array], Any], keys: jax.Array, train_config, loss_weights, loss_options,
                batch_for_step: Callable[[int], Batch], ckpt_dir: Path, name: str,
                transform_outputs: Callable | None = None) -> TrainResult:
  """Trains S independently seeded models as one program: the pure step vmapped over a leading seed axis,
  that axis sharded over the devices (`seed_mesh`). `build(key)` makes one model; `batch_for_step(step)`
  returns batches with a leading seed axis (S, B, ...). The result's params carry the seed axis.
  """
  num_seeds = len(keys)
  states = []
  for k in keys:
    init_key, _ = jax.random.split(k)
    graphdef, state, step_fn = initial_state(build(init_key), train_config, loss_weights, loss_options, k,
                                             transform_outputs)
    states.append(state)
  stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)
  mesh = seed_mesh(num_seeds)
  by_seed = NamedSharding(mesh, PartitionSpec("seed"))
  place = lambda tree: distributed.put(tree, by_seed)
  step_keys = jax.vmap(lambda k: jax.random.split(k)[1])(keys)
  fold_in_each = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))  # built once: 0.17 vs 0.92 ms eager
  train_state, history = _fit(
      jax.jit(jax.vmap(step_fn), donate_argnums=(0,)), stacked, place,
      lambda step: place(dict(batch_for_step(step))),
      lambda step: place(fold_in_each(step_keys, step)),
      train_config, ckpt_dir, name, images_per_step=num_seeds * int(train_config.batch_size))
  return TrainResult(graphdef, train_state["params"], train_state["model_state"], history)


def batches_ahead(batch_for_step: Callable[[int], Any], start: int, stop: int) -> Iterator:
  """`batch_for_step(step)` for step in [start, stop), each one prepared in a background thread while the step
  before it runs (reading, normalising and placing a batch of 128 cutouts takes ~10-15 ms of host time against
  a ~130 ms conv step). Batches are a pure function of the step: the values and their order do not change."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches") as loader:
    upcoming = loader.submit(batch_for_step, start) if start < stop else None
    for step in range(start, stop):
      batch = upcoming.result()
      if step + 1 < stop:
        upcoming = loader.submit(batch_for_step, step + 1)
      yield batch


def _save(manager: ocp.CheckpointManager, step: int, train_state, ckpt_dir: Path) -> None:
  """Saves a step, waits until orbax has finalised it, then records its checksums (process 0)."""
  manager.save(step, args=ocp.args.StandardSave(distributed.to_host(train_state)))
  manager.wait_until_finished()
  if distributed.is_writer():
    write_checksums(Path(ckpt_dir).absolute() / str(step))


def _fit(step_fn, train_state, place_state, batch_for_step, key_for_step, train_config, ckpt_dir: Path, name: str,
         images_per_step: int | None = None, describe_step: Callable[[int], str | None] | None = None):
  """The loop shared by single runs and seed studies: resume, step, NaN stop, progress, checkpoints."""
  ckpt_dir = Path(ckpt_dir).absolute()
  resume_step, _ = _usable_step(ckpt_dir, name)  # before the manager lists the steps: corrupt ones moved aside
  manager = _checkpoint_manager(ckpt_dir)
  start = 0
  if resume_step is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, distributed.to_host(train_state))
    train_state = manager.restore(resume_step, args=ocp.args.StandardRestore(abstract))
    start = int(resume_step)
    logging.info("%s: resumed from checkpoint at step %d", name, start)
    print(f"[{name}] resumed from checkpoint at step {start}", flush=True)
  train_state = place_state(train_state)

  history: list[dict[str, float]] = []
  steps = int(train_config.steps)
  images_per_step = images_per_step or int(train_config.batch_size)
  t0 = time.perf_counter()
  steady_since = None  # (time, step) after the first step, whose time is mostly compilation
  for step, batch in zip(range(start, steps), batches_ahead(batch_for_step, start, steps)):
    train_state, metrics = step_fn(train_state, batch, key_for_step(step))
    host = distributed.to_host(dict(metrics))
    finite = host.pop("finite")
    if not np.all(finite):
      manager.wait_until_finished()
      which = "" if finite.ndim == 0 else f" (seeds {np.flatnonzero(~finite).tolist()})"
      terms = ", ".join(f"{k}={np.ravel(v)[np.argmin(np.ravel(finite))]:.4g}" for k, v in host.items())
      suspects = describe_step(step) if describe_step is not None else None
      raise TrainingDiverged(
          f"[{name}] non-finite loss or gradient at step {step}{which} ({terms}); stopped. The last good "
          f"checkpoint (step {manager.latest_step()}) is kept in {ckpt_dir}."
          + (f" The inputs of that batch most likely to blame (largest |pixel| first): {suspects}." if suspects
             else ""),
          step=step, seeds=None if finite.ndim == 0 else np.flatnonzero(~finite).tolist())
    done = step + 1
    if steady_since is None:
      steady_since = (time.perf_counter(), done)
      print(f"[{name}] first step (compilation included) took {steady_since[0] - t0:.1f}s", flush=True)
    if done % train_config.log_every == 0 or done == steps:
      since, since_step = steady_since if done > steady_since[1] else (t0, start)
      rate = (done - since_step) * images_per_step / max(time.perf_counter() - since, 1e-9)
      left = (steps - done) * images_per_step / max(rate, 1e-9)
      means = {k: float(np.mean(v)) for k, v in host.items()}
      history.append(dict(step=done, **means, images_per_second=rate))
      terms = " ".join(f"{k}={v:.4g}" for k, v in means.items())
      print(f"[{name}] step {done}/{steps} {terms} | {rate:.0f} img/s | ~{left:.0f}s left", flush=True)
    if done % train_config.checkpoint_every == 0 or done == steps:
      _save(manager, done, train_state, ckpt_dir)
  manager.wait_until_finished()
  manager.close()
  return train_state, history


def make_predict_fn(graphdef):
  """Jitted deterministic forward pass (eval mode, z = mu)."""

  @jax.jit
  def predict(params, model_state, x):
    outputs, _ = models.apply_model(graphdef, params, model_state, x, key=None, train=False)
    return outputs

  return predict


def _predict_chunks(predict, params, model_state, inputs: Callable[[np.ndarray], np.ndarray], n: int,
                    batch_size: int, keys: tuple[str, ...], axis: int,
                    place_x: Callable = lambda x: x) -> dict[str, np.ndarray]:
  """Runs `predict(params, model_state, place_x(x))` over `n` objects in chunks; the object axis of the outputs
  is `axis`. The last chunk is padded to the batch size so the program compiles once.
  """
  chunks: dict[str, list[np.ndarray]] = {}
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    x = inputs(idx)
    pad = batch_size - len(idx)
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    out = distributed.to_host(predict(params, model_state, place_x(x)))
    for k in keys:
      if k in out:
        chunks.setdefault(k, []).append(np.take(np.asarray(out[k]), np.arange(len(idx)), axis=axis))
  return {k: np.concatenate(v, axis=axis) for k, v in chunks.items()}


def predict_in_batches(result: TrainResult, inputs: Callable[[np.ndarray], np.ndarray], n: int, batch_size: int,
                       keys: tuple[str, ...] = ("mu", "z")) -> dict[str, np.ndarray]:
  """Runs the trained model over `n` objects; `inputs(indices)` returns the model inputs for those indices.

  With several processes each chunk is split over every process's devices (`data_mesh(batch_size)`); every
  process gets all the outputs.
  """
  params, model_state, place_x = result.params, result.model_state, lambda x: x
  if distributed.is_multiprocess():
    mesh = data_mesh(batch_size)
    params, model_state = replicate(distributed.to_host((params, model_state)), mesh)
    place_x = lambda x: shard_batch({"x": x}, mesh)["x"]
  return _predict_chunks(make_predict_fn(result.graphdef), params, model_state, inputs, n, batch_size, keys,
                         axis=0, place_x=place_x)


def predict_seeds_in_batches(result: TrainResult, inputs: Callable[[np.ndarray], np.ndarray], n: int,
                             batch_size: int, keys: tuple[str, ...] = ("mu", "z")) -> dict[str, np.ndarray]:
  """Like predict_in_batches for a seed study: outputs carry a leading seed axis (S, n, ...). With several
  processes the seeds are split over every process's devices (`seed_mesh`) and each chunk is replicated."""
  predict = jax.jit(jax.vmap(
      lambda p, s, x: models.apply_model(result.graphdef, p, s, x, key=None, train=False)[0],
      in_axes=(0, 0, None)))
  params, model_state, place_x = result.params, result.model_state, lambda x: x
  if distributed.is_multiprocess():
    mesh = seed_mesh(len(jax.tree.leaves(params)[0]))
    params, model_state = distributed.put(distributed.to_host((params, model_state)),
                                          NamedSharding(mesh, PartitionSpec("seed")))
    place_x = lambda x: replicate(x, mesh)
  return _predict_chunks(predict, params, model_state, inputs, n, batch_size, keys, axis=1, place_x=place_x)
