"""Training throughput of the project's models on random data (images per second, steady state).

  python benchmarks/train_throughput.py --model=reference --batch=128 [--steps N]
      [--upconv=adjoint|flax] [--downconv=adjoint|flax] [--devices=N] [--axis_type=explicit|auto]
      [--no-donate] [--xla_flags='...'] [--peak]

`reference` is the comparison model: encoder of four stride-2 3x3 convs (32, 64, 128, 256, ReLU),
dense to mu and log_sigma of 16 units, decoder mirrored with transposed convolutions (256 -> 128
-> 64 -> 32 -> 5, the last linear); MSE + KL; Adam; float32. Other models: conv_ae (stage-1 AE),
residual_conv_ae, dense_vae (on 30-d codes), conv_vae (the registry default, 2-d latent).
--upconv/--downconv=flax swap in nnx.ConvTranspose / nnx.Conv for the hand-written layers.

One jitted train step (params, optimiser state and batch-norm state donated) is called from a
Python loop: a rolled lax.scan over steps is far slower on XLA:CPU. With --devices=N (default:
2 where there are 2 cores) the host is split into N XLA CPU devices and the batch is sharded
over them (params replicated); XLA inserts the gradient all-reduce. The compile time is reported
separately; batches are pre-generated on device, so input loading is not part of the figure.
cpu_seconds_per_step (this process's CPU time) is the steadier figure when other jobs share the
cores. The process is set up as launch.py sets it up (`stargal_jax.host_runtime.configure`): to measure without
its settings, pass --xla_flags='--xla_cpu_experimental_ynn_fusion_type=' (jax's YNNPACK convolutions) and/or set
STARGAL_KEEP_MALLOC=1 (glibc's default allocator). --peak adds the step's FLOPs from XLA's cost analysis (summed over the devices), a 4096^2
float32 matmul's FLOP/s measured right after (the machine's peak as XLA reaches it) and the fraction
of it the training step achieves. The LAST line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

MODEL_KWARGS = {
  "reference": ("conv_vae", {"latent_dim": 16, "channels": (32, 64, 128, 256),
                             "activation": "relu", "norm": "none"}),
  "conv_vae": ("conv_vae", {}),
  "conv_ae": ("conv_ae", {}),
  "residual_conv_ae": ("residual_conv_ae", {}),
  "dense_vae": ("dense_vae", {}),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="reference", choices=sorted(MODEL_KWARGS))
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20, help="timed steps")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  parser.add_argument("--upconv", default="adjoint", choices=("adjoint", "flax"),
                      help="decoder: UpConv2x (hand-written adjoint) or nnx.ConvTranspose")
  parser.add_argument("--downconv", default="adjoint", choices=("adjoint", "flax"),
                      help="encoder: Conv2x (hand-written backward pass) or nnx.Conv")
  parser.add_argument("--devices", type=int, default=min(2, os.cpu_count() or 1),
                      help="XLA host devices to shard the batch over (2 was ~20%% faster than 1 "
                           "on the 2-core machine)")
  parser.add_argument("--axis_type", default="explicit", choices=("explicit", "auto"),
                      help="sharding mode of the batch axis (explicit: sharding in types)")
  parser.add_argument("--no-donate", dest="donate", action="store_false")
  parser.add_argument("--xla_flags", default="", help="extra XLA_FLAGS")
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--peak", action="store_true",
                      help="also report the step's FLOPs (XLA cost analysis), the machine's peak float32 "
                           "FLOP/s (4096^2 matmul, benchmarks/peak_flops.py) and the fraction achieved")
  return parser.parse_args(argv)


def configure_host(devices: int, extra_flags: str) -> dict:
  """XLA_FLAGS and allocator as launch.py sets them (`stargal_jax.host_runtime.configure`), plus `extra_flags`
  (which win); before jax is imported, as the device count is fixed at backend start-up."""
  from stargal_jax import host_runtime
  if extra_flags:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {extra_flags}".strip()
  return host_runtime.configure(devices)


def main(argv: list[str]) -> dict:
  args = parse_args(argv)
  host = configure_host(args.devices, args.xla_flags)

  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import AxisType, NamedSharding, PartitionSpec

  from stargal_jax import models

  registry_name, kwargs = MODEL_KWARGS[args.model]
  kwargs = dict(kwargs)
  if registry_name != "dense_vae":
    kwargs.update(upconv=args.upconv, downconv=args.downconv)
  model = models.build_model(registry_name, kwargs, 0)
  graphdef, params, state = models.split_model(model)
  optimizer = optax.adam(args.learning_rate)
  opt_state = optimizer.init(params)
  is_vae = registry_name in ("conv_vae", "dense_vae")

  def loss_fn(params, state, batch, key):
    out, new_state = models.apply_model(
      graphdef, params, state, batch, key=key if is_vae else None, train=True)
    mse = jnp.mean(jnp.sum((out["recon"] - batch) ** 2, axis=tuple(range(1, batch.ndim))))
    loss = mse
    if is_vae:  # KL(N(mu, sigma^2) || N(0, 1)), summed over latent units
      mu, log_sigma = out["mu"], out["log_sigma"]
      kl = 0.5 * jnp.sum(mu ** 2 + jnp.exp(2 * log_sigma) - 1 - 2 * log_sigma, axis=-1)
      loss = loss + jnp.mean(kl)
    return loss, new_state

  def train_step(params, opt_state, state, batch, key):
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, state, batch, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, new_state, loss

  step = jax.jit(train_step, donate_argnums=(0, 1, 2) if args.donate else ())

  devices = jax.devices()[:args.devices]
  if len(devices) < args.devices:
    raise RuntimeError(f"asked for {args.devices} devices, have {len(jax.devices())}")
  if args.batch % len(devices):
    raise ValueError(f"batch {args.batch} not divisible by {len(devices)} devices")
  axis_type = AxisType.Explicit if args.axis_type == "explicit" else AxisType.Auto
  mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(axis_type,), devices=devices)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharded = NamedSharding(mesh, PartitionSpec("data"))
  params, opt_state, state = jax.device_put((params, opt_state, state), replicated)

  sample_shape = (args.batch, 30) if registry_name == "dense_vae" else (args.batch, 64, 64, 5)
  data_key, step_key = jax.random.split(jax.random.key(0))
  batches = [jax.device_put(jax.random.normal(k, sample_shape, jnp.float32), batch_sharded)
             for k in jax.random.split(data_key, 4)]

  start = time.perf_counter()
  compiled = step.lower(params, opt_state, state, batches[0], step_key).compile()
  compile_seconds = time.perf_counter() - start

  def run(n_steps, offset, params, opt_state, state):
    loss = None
    for i in range(n_steps):
      key = jax.random.fold_in(step_key, offset + i)
      params, opt_state, state, loss = compiled(
        params, opt_state, state, batches[(offset + i) % len(batches)], key)
    jax.block_until_ready((params, loss))
    return params, opt_state, state, loss

  params, opt_state, state, _ = run(args.warmup, 0, params, opt_state, state)
  load_before = os.getloadavg()[0]
  start, cpu_start = time.perf_counter(), time.process_time()
  params, opt_state, state, loss = run(args.steps, args.warmup, params, opt_state, state)
  seconds = time.perf_counter() - start
  # CPU time of this process (all threads): a steadier comparison when other jobs share the cores.
  cpu_seconds = time.process_time() - cpu_start

  result = {
    "images_per_second": round(args.batch * args.steps / seconds, 1),
    "seconds_per_step": round(seconds / args.steps, 4),
    "cpu_seconds_per_step": round(cpu_seconds / args.steps, 4),
    "compile_seconds": round(compile_seconds, 2),
    "model": args.model,
    "upconv": args.upconv if registry_name != "dense_vae" else None,
    "downconv": args.downconv if registry_name != "dense_vae" else None,
    "batch": args.batch,
    "steps": args.steps,
    "devices": len(devices),
    "axis_type": args.axis_type,
    "device_kind": devices[0].device_kind,
    "donate": args.donate,
    "xla_flags": host["xla_flags"],
    "keep_freed_memory": host["keep_freed_memory"],
    "final_loss": float(loss),
    "jax_version": jax.__version__,
    "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    "cpu_count": os.cpu_count(),
  }
  if args.peak:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peak_flops
    flops = peak_flops.step_flops(compiled)
    peak = peak_flops.measure_peak()
    achieved = flops * args.steps / seconds
    result.update(step_gflops=round(flops / 1e9, 3), achieved_gflops=round(achieved / 1e9, 1),
                  peak_gflops=peak["peak_gflops"], fraction_of_peak=round(achieved / (peak["peak_gflops"] * 1e9), 3),
                  peak=peak)
  return result


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1:])))
