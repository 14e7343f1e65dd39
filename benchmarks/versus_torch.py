"""The reference conv VAE, the project against PyTorch eager, interleaved on the same machine.

  python benchmarks/versus_torch.py --torch_python=/tmp/torchvenv/bin/python [--reps 5] [--steps 30]

Runs, rep after rep in turn (so slow drifts in the machine's load hit every variant alike):
  project            benchmarks/train_throughput.py --model=reference, set up as launch.py sets it up
                     (stargal_jax.host_runtime.configure: XLA's own convolutions, glibc keeping freed memory)
  project_jax_defaults  the same with jax's defaults (YNNPACK convolutions, glibc's default allocator)
  torch              benchmarks/torch_reference.py with PyTorch's defaults
  torch_same_malloc  the same with glibc set as host_runtime sets it (MALLOC_ARENA_MAX=1, MALLOC_MMAP_MAX_=0,
                     MALLOC_TRIM_THRESHOLD_=1 GiB): PyTorch's CPU allocator also returns large blocks on free
Every run prints images/s (steady state) and CPU seconds per step; the summary gives the median and range of
each variant and the ratios of medians. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAME_MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def variants(torch_python: str, batch: int, steps: int) -> dict[str, tuple[list[str], dict[str, str]]]:
  project = [sys.executable, str(HERE / "train_throughput.py"), "--model=reference", f"--batch={batch}",
             f"--steps={steps}"]
  torch = [torch_python, str(HERE / "torch_reference.py"), f"--batch={batch}", f"--steps={steps}"]
  return {
    "project": (project, {}),
    "project_jax_defaults": (project + ["--xla_flags=--xla_cpu_experimental_ynn_fusion_type="],
                             {"STARGAL_KEEP_MALLOC": "1"}),
    "torch": (torch, {}),
    "torch_same_malloc": (torch, SAME_MALLOC),
  }


def run_once(command: list[str], extra_env: dict[str, str]) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in (*SAME_MALLOC, "STARGAL_KEEP_MALLOC")}
  env.update(extra_env)
  proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=HERE.parent)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--torch_python", required=True, help="python of a venv with torch==2.13.0 (not a dependency)")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--batch", type=int, default=128)
  args = parser.parse_args(argv)
  runs = variants(args.torch_python, args.batch, args.steps)
  results: dict[str, list[dict]] = {name: [] for name in runs}
  for rep in range(args.reps):
    for name, (command, env) in runs.items():
      r = run_once(command, env)
      results[name].append(r)
      print(f"rep {rep + 1} {name:22s} {r['images_per_second']:8.1f} images/s  {r['cpu_seconds_per_step']:.4f} "
            f"CPU s/step  load {r['load_average_1min']}", flush=True)
  summary = {}
  for name, rs in results.items():
    ips = [r["images_per_second"] for r in rs]
    summary[name] = {"median": statistics.median(ips), "min": min(ips), "max": max(ips),
                     "cpu_seconds_per_step_median": statistics.median(r["cpu_seconds_per_step"] for r in rs)}
  med = {name: s["median"] for name, s in summary.items()}
  ratios = {"project / torch": med["project"] / med["torch"],
            "project / torch_same_malloc": med["project"] / med["torch_same_malloc"],
            "project_jax_defaults / torch": med["project_jax_defaults"] / med["torch"],
            "project / project_jax_defaults": med["project"] / med["project_jax_defaults"]}
  print("\n| variant | images/s median (min-max) | CPU s/step |\n|---|---|---|")
  for name, s in summary.items():
    print(f"| {name} | {s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f}) | {s['cpu_seconds_per_step_median']:.3f} |")
  print("\n" + "\n".join(f"{k}: {v:.2f}" for k, v in ratios.items()))
  return {"summary": summary, "ratios": {k: round(v, 3) for k, v in ratios.items()}, "reps": args.reps,
          "steps": args.steps, "batch": args.batch, "cpu_count": os.cpu_count(), "runs": results}


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1:])))
