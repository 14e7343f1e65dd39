"""Multi-seed training throughput (images x seeds per second) of the project's own train step.

  python benchmarks/seed_throughput.py [--quick] [--models reference,dense_vae] [--seeds 1,4,16]
      [--strategies loop,vmap,sharded,...] [--rounds N] [--target_seconds T] [--devices 2] [--no-peak] [--e2e]

For S seeds, three ways to run S independently seeded trainings of one model:

- `loop`:    a Python loop over the seeds of the jitted single-seed step, each seed's batch split
             over the devices with parameters replicated: exactly what `train.train` runs per seed
             (`data_mesh`, `shard_batch`, `replicate`), i.e. classify.pipelines.train_latents(seed_scope='all').
- `vmap`:    `jax.jit(jax.vmap(step))` over a stacked leading seed axis, all on one device.
- `sharded`: the same vmapped step with the seed axis sharded over the devices (`train.seed_mesh`,
             NamedSharding(P('seed'))): exactly what `train.train_seeds` runs
             (classify.pipelines.train_latents with seed_scope='stage2'). For S = 1 seed_mesh has one device: same as vmap.
Four candidates that are not (yet) the project's code path, for comparison:
- `shard_map`:      `jax.shard_map(jax.vmap(step))` over the seed mesh: each device runs its own
                    seeds with no collectives (for conv models the SPMD partitioner does not split
                    the vmapped, i.e. grouped, convolutions of `sharded` over the seed axis: it
                    all-gathers and every device computes every seed).
- `shard_map_unrolled`: the same with the device's seeds unrolled one after another (a Python loop
                    traced into the program) in place of vmap, so every convolution stays ungrouped.
- `shard_map_scan`: the same with `lax.map` (a rolled loop over the device's seeds).
- `loop_spread`:    the Python loop with seed s placed whole on device s % D (no data parallelism),
                    all seeds' steps dispatched asynchronously, metrics fetched once per round.

The step is the project's (`train.initial_state` -> `train.make_step_fn` with `losses.make_loss_fn`
and `train.make_optimizer`: clip + Adam, NaN guard), so this measures what the project runs. Models:
`reference` (conv VAE 32-64-128-256, ReLU, 16-d latent, MSE + KL, batch 128: the PyTorch comparison
model), `conv_ae` (the cvae stage-1 AE, batch 128) and `dense_vae` (the cvae stage-2 VAE on 30-d codes,
recon_mse + 0.2 KL on unit 0, batch 256, lr 3e-3). Batches are random and pre-placed on the devices
(input loading is not in the figure); metrics are fetched to the host after every step, as `train.train`
does. A round is one step of every seed; the figure is S * batch * rounds / seconds of the timed
rounds. FLOPs per round come from XLA's cost analysis of the compiled program(s), summed over the devices
(FLOPs executed, so redundant per-device work counts); the fraction of peak
compares them with a 4096^2 float32 matmul measured at the start and the end of the same run (the better
of the two; benchmarks/peak_flops.py).

Prints one JSON line per (model, strategy, S), then a summary table, then (last line) a JSON object
with every result. `--e2e` also times `launch.py --config=configs/cvae.py:smoke` with num_seeds=1 and
16 end to end (fresh work directories; wall seconds, data generation cached beforehand).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ["loop", "vmap", "sharded", "loop_spread", "shard_map", "shard_map_unrolled", "shard_map_scan"]


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="short run: S = 1, 4; few rounds")
  parser.add_argument("--models", default="reference,dense_vae",
                      help="comma list of reference, conv_ae, dense_vae")
  parser.add_argument("--seeds", default="1,4,16")
  parser.add_argument("--strategies", default="loop,vmap,sharded,loop_spread,shard_map,shard_map_unrolled",
                      help=f"comma list of {STRATEGIES}")
  parser.add_argument("--rounds", type=int, default=0,
                      help="timed rounds (one step of every seed); 0 = 16 rounds (conv: 2048 images per "
                           "seed) or 100 (dense), capped by --target_seconds")
  parser.add_argument("--warmup", type=int, default=2, help="untimed rounds after compiling (>= 1)")
  parser.add_argument("--target_seconds", type=float, default=30.0,
                      help="with --rounds 0: cap the timed rounds at about this many seconds (min 2 rounds)")
  parser.add_argument("--devices", type=int, default=min(2, os.cpu_count() or 1),
                      help="forced XLA host devices (set before jax is imported)")
  parser.add_argument("--no-peak", dest="peak", action="store_false", help="skip the peak matmul")
  parser.add_argument("--peak_n", type=int, default=4096)
  parser.add_argument("--e2e", action="store_true", help="also time launch.py cvae:smoke, 1 vs 16 seeds")
  parser.add_argument("--e2e_seeds", default="1,16")
  parser.add_argument("--e2e_overrides", default="",
                      help="extra launch.py flags, space-separated (e.g. '--config.vae.train.steps=300')")
  args = parser.parse_args(argv)
  if args.quick:
    if args.seeds == "1,4,16":
      args.seeds = "1,4"
    args.warmup = min(args.warmup, 1)
    args.target_seconds = min(args.target_seconds, 8.0)
  args.warmup = max(args.warmup, 1)
  return args


def configure_xla(devices: int) -> str:
  """XLA_FLAGS and allocator as launch.py sets them (`stargal_jax.host_runtime.configure`)."""
  from stargal_jax import host_runtime
  return host_runtime.configure(devices)["xla_flags"]


def model_setups():
  """name -> (registry model, kwargs, train config, loss weights, loss options, input shape per example)."""
  sys.path.insert(0, str(REPO))
  from configs import common
  import train_throughput  # same directory: the reference model's definition

  ref_name, ref_kwargs = train_throughput.MODEL_KWARGS["reference"]
  ae = common.stage1_ae_config(steps=1)
  vae = common.dense_vae_config(steps=1, latent_dim=2, eps_scale=0.1)
  to_kwargs = lambda c: {k: tuple(v) if isinstance(v, list) else v for k, v in c.to_dict().items()}
  return {
    "reference": (ref_name, dict(ref_kwargs), common.train_config(1, batch_size=128),
                  {"recon_mse": 1.0, "kl": 1.0}, {}, (64, 64, 5)),
    "conv_ae": (ae.model, to_kwargs(ae.model_kwargs), ae.train, {"recon_mse": 1.0}, {}, (64, 64, 5)),
    # The cvae config's stage 2: recon_mse + 0.2 KL on unit 0 (configs/cvae.py).
    "dense_vae": (vae.model, to_kwargs(vae.model_kwargs), vae.train, {"recon_mse": 1.0, "kl": 0.2},
                  {"kl": {"units": (0,)}}, (30,)),
  }


def default_rounds(model: str, seeds: int, quick: bool) -> int:
  if model == "dense_vae":
    return max(20 if quick else 100, 1)
  images = 512 if quick else 2048  # per seed
  return max(images // 128, 2)


def bench_one(model: str, strategy: str, seeds: int, args, setups, peak_gflops: float | None) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec

  from stargal_jax import models, train
  import peak_flops

  registry, kwargs, train_cfg, weights, options, shape = setups[model]
  batch = int(train_cfg.batch_size)
  root = jax.random.key(1234)
  seed_keys = jax.random.split(root, seeds)
  states, step_fn = [], None
  for k in seed_keys:
    init_key, _ = jax.random.split(k)
    _, state, step_fn = train.initial_state(models.build_model(registry, kwargs, init_key), train_cfg,
                                            weights, options, k)
    states.append(state)
  data_key = jax.random.fold_in(root, 7)
  n_batches = 2  # alternate two batches per seed (fresh data, bounded memory)
  host_batches = [np.asarray(jax.random.normal(jax.random.fold_in(data_key, i), (seeds, batch, *shape),
                                               jnp.float32)) for i in range(n_batches)]
  step_keys = [jax.random.fold_in(k, 99) for k in seed_keys]
  rounds = args.rounds or default_rounds(model, seeds, args.quick)

  if strategy == "loop_spread":
    # Seed s lives on device s % D (no data parallelism, no collectives); one round dispatches every seed's
    # step asynchronously, so the devices work at once, then fetches the metrics.
    devices = jax.devices()
    step = jax.jit(step_fn, donate_argnums=(0,))
    dev = [devices[s % len(devices)] for s in range(seeds)]
    states = [jax.device_put(st, d) for st, d in zip(states, dev)]
    batches = [[jax.device_put({"x": hb[s]}, dev[s]) for s in range(seeds)] for hb in host_batches]
    compile_start = time.perf_counter()
    compiled_by_device = {}
    for s in range(seeds):
      if dev[s] not in compiled_by_device:
        compiled_by_device[dev[s]] = step.lower(states[s], batches[0][s], jax.device_put(step_keys[s], dev[s])).compile()
    compile_seconds = time.perf_counter() - compile_start
    flops_per_round = peak_flops.step_flops(next(iter(compiled_by_device.values()))) * seeds
    devices_used = len(compiled_by_device)
    hlo = next(iter(compiled_by_device.values())).as_text()

    def one_round(r):
      all_metrics = []
      for s in range(seeds):
        states[s], metrics = step(states[s], batches[r % n_batches][s],
                                  jax.device_put(jax.random.fold_in(step_keys[s], r), dev[s]))
        all_metrics.append(metrics)
      jax.device_get(all_metrics)

  elif strategy == "loop":
    mesh = train.data_mesh(batch)
    step = jax.jit(step_fn, donate_argnums=(0,))
    states = [train.replicate(s, mesh) for s in states]
    batches = [[train.shard_batch({"x": hb[s]}, mesh) for s in range(seeds)] for hb in host_batches]
    compile_start = time.perf_counter()
    compiled = step.lower(states[0], batches[0][0], step_keys[0]).compile()
    compile_seconds = time.perf_counter() - compile_start
    flops_per_round = peak_flops.step_flops(compiled) * seeds
    devices_used = mesh.devices.size
    hlo = compiled.as_text()

    def one_round(r):
      for s in range(seeds):
        states[s], metrics = compiled(states[s], batches[r % n_batches][s], jax.random.fold_in(step_keys[s], r))
        jax.device_get(metrics)  # train.train fetches the metrics every step

  else:
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)
    if strategy == "vmap":
      place = lambda tree: jax.device_put(tree, jax.devices()[0])
      devices_used = 1
    elif strategy in ("sharded", "shard_map", "shard_map_scan", "shard_map_unrolled"):
      mesh = train.seed_mesh(seeds)
      by_seed = NamedSharding(mesh, PartitionSpec("seed"))
      place = lambda tree: jax.device_put(tree, by_seed)
      devices_used = mesh.devices.size
    else:
      raise ValueError(f"unknown strategy {strategy!r}; valid: {STRATEGIES}")
    if strategy in ("vmap", "sharded"):
      step = jax.jit(jax.vmap(step_fn), donate_argnums=(0,))
    else:
      # Each device runs its own seeds with no collectives: vmapped, or one after another (lax.map).
      def unrolled(st, b, k):
        n_local = k.shape[0]
        outs = [step_fn(*jax.tree.map(lambda a: a[i], (st, b, k))) for i in range(n_local)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

      local = {"shard_map": jax.vmap(step_fn), "shard_map_unrolled": unrolled,
               "shard_map_scan": lambda st, b, k: jax.lax.map(lambda a: step_fn(*a), (st, b, k))}[strategy]
      spec = PartitionSpec("seed")
      step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec),
                     donate_argnums=(0,))
    state = place(stacked)
    batches = [place({"x": hb}) for hb in host_batches]
    stacked_keys = jnp.stack(step_keys)
    keys_for = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
    compile_start = time.perf_counter()
    compiled = step.lower(state, batches[0], place(keys_for(stacked_keys, 0))).compile()
    compile_seconds = time.perf_counter() - compile_start
    flops_per_round = peak_flops.step_flops(compiled)
    hlo = compiled.as_text()
    holder = {"state": state}

    def one_round(r):
      holder["state"], metrics = compiled(holder["state"], batches[r % n_batches],
                                          place(keys_for(stacked_keys, r)))
      jax.device_get(metrics)

  for r in range(args.warmup):
    round_start = time.perf_counter()
    one_round(r)
    last_round = time.perf_counter() - round_start
  if not args.rounds:  # as many rounds as fit the time target, within [2, the default]
    rounds = int(min(rounds, max(2, args.target_seconds // max(last_round, 1e-6))))
  load_before = os.getloadavg()[0]
  start, cpu_start = time.perf_counter(), time.process_time()
  for r in range(args.warmup, args.warmup + rounds):
    one_round(r)
  seconds = time.perf_counter() - start
  cpu_seconds = time.process_time() - cpu_start
  images = seeds * batch * rounds
  achieved = flops_per_round * rounds / seconds
  out = {
    "model": model, "strategy": strategy, "seeds": seeds, "batch": batch, "rounds": rounds,
    "devices_used": devices_used,
    "images_x_seeds_per_second": round(images / seconds, 1),
    "per_seed_images_per_second": round(images / seconds / seeds, 1),
    "seconds_per_round": round(seconds / rounds, 4),
    "cpu_seconds_per_round": round(cpu_seconds / rounds, 4),
    # Steadier under shared cores: images x seeds per CPU-second of this process, times the cores.
    "images_x_seeds_per_cpu_second_x_cores": round(images / cpu_seconds * (os.cpu_count() or 1), 1),
    "compile_seconds": round(compile_seconds, 2),
    "gflops_per_round": round(flops_per_round / 1e9, 3),
    # Collectives in the compiled step and the largest group count of its convolutions (a vmapped conv
    # over S seeds becomes one grouped convolution, feature_group_count = S).
    "all_gathers": len(re.findall(r"all-gather(?:-start)?\(", hlo)),
    "max_conv_groups": max([int(g) for g in re.findall(r"feature_group_count=(\d+)", hlo)] or [1]),
    "achieved_gflops": round(achieved / 1e9, 1),
    "fraction_of_peak": round(achieved / (peak_gflops * 1e9), 3) if peak_gflops else None,
    "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
  }
  return out


def run_e2e(seed_counts: list[int], overrides: list[str] = ()) -> list[dict]:
  """Wall seconds of `launch.py --config=configs/cvae.py:smoke` per num_seeds, fresh work dirs."""
  results = []
  python = sys.executable
  # Make sure the smoke data set is generated and cached before anything is timed.
  with tempfile.TemporaryDirectory() as warm:
    subprocess.run([python, "launch.py", "--config=configs/cvae.py:smoke", f"--workdir={warm}/w"],
                   cwd=REPO, check=True, capture_output=True)
  for n in seed_counts:
    with tempfile.TemporaryDirectory() as tmp:
      cmd = [python, "launch.py", "--config=configs/cvae.py:smoke", f"--workdir={tmp}/b",
             f"--config.num_seeds={n}", *overrides]
      load_before = os.getloadavg()[0]
      start = time.perf_counter()
      proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
      wall = time.perf_counter() - start
      if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
      results.append({"e2e": "cvae:smoke", "num_seeds": n, "wall_seconds": round(wall, 1),
                      "command": " ".join(["python", *cmd[1:]]).replace(f"{tmp}/b", "/tmp/b"),
                      "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]})
      print(json.dumps(results[-1]), flush=True)
  return results


def summary_table(results: list[dict]) -> str:
  lines = ["| model | S | strategy | devices | images x seeds / s | per seed | per CPU-s x cores | s / round | "
           "GFLOP/round | GFLOP/s | of peak | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    frac = f"{100 * r['fraction_of_peak']:.1f}%" if r["fraction_of_peak"] is not None else "-"
    lines.append(f"| {r['model']} | {r['seeds']} | {r['strategy']} | {r['devices_used']} | "
                 f"{r['images_x_seeds_per_second']:.0f} | {r['per_seed_images_per_second']:.0f} | "
                 f"{r['images_x_seeds_per_cpu_second_x_cores']:.0f} | "
                 f"{r['seconds_per_round']:.3f} | {r['gflops_per_round']:.2f} | {r['achieved_gflops']:.1f} | "
                 f"{frac} | {r['load_average_1min'][0]:.1f} |")
  return "\n".join(lines)


def main(argv: list[str]) -> dict:
  args = parse_args(argv)
  xla_flags = configure_xla(args.devices)
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  import jax
  import peak_flops

  setups = model_setups()
  model_names = [m for m in args.models.split(",") if m]
  unknown = sorted(set(model_names) - set(setups))
  if unknown:
    raise SystemExit(f"unknown model(s) {unknown}; valid: {sorted(setups)}")
  strategies = [s for s in args.strategies.split(",") if s]
  seed_counts = [int(s) for s in args.seeds.split(",") if s]

  peak = None
  if args.peak:
    peak = peak_flops.measure_peak(args.peak_n, 3 if args.quick else 5)
    print(json.dumps({"peak": peak}), flush=True)
  peak_gflops = peak["peak_gflops"] if peak else None

  results = []
  for model in model_names:
    for seeds in seed_counts:
      for strategy in strategies:
        result = bench_one(model, strategy, seeds, args, setups, peak_gflops)
        results.append(result)
        print(json.dumps(result), flush=True)
  if args.peak:  # again at the end (the load of shared cores drifts); the better of the two is the peak
    peak_end = peak_flops.measure_peak(args.peak_n, 3 if args.quick else 5)
    print(json.dumps({"peak_end": peak_end}), flush=True)
    peak = dict(peak, start_gflops=peak["peak_gflops"], end_gflops=peak_end["peak_gflops"],
                peak_gflops=max(peak["peak_gflops"], peak_end["peak_gflops"]))
    for r in results:
      r["fraction_of_peak"] = round(r["achieved_gflops"] / peak["peak_gflops"], 3)
  e2e = (run_e2e([int(s) for s in args.e2e_seeds.split(",")], args.e2e_overrides.split())
         if args.e2e else [])
  print(summary_table(results), flush=True)
  if e2e:
    print("\n| end to end command | num_seeds | wall s |\n|---|---|---|")
    for r in e2e:
      print(f"| {r['command']} | {r['num_seeds']} | {r['wall_seconds']} |")
  return {"results": results, "peak": peak, "e2e": e2e, "xla_flags": xla_flags, "jax_version": jax.__version__,
          "devices": len(jax.devices()), "cpu_count": os.cpu_count()}


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1:])))
