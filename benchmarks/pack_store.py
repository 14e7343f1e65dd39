"""Packs 100k+ synthetic study-format cutouts; measures pack time, peak RSS and batch read speed.

The data imitate the study's layout: labelled files of 1-14 records (objID, image, class, z) and
unlabelled files of one record each, about 1% of images with a non-finite edge strip (as SDSS
cutouts at frame edges have). Generation streams file by file. Packing and reading each run in a
fresh subprocess, so the packer's peak resident memory is measured alone
(`getrusage(RUSAGE_CHILDREN).ru_maxrss`) and reads start from a new process. "Cold" reads follow
`posix_fadvise(DONTNEED)` on the packed images file (drops its pages from the page cache); "warm"
reads repeat the same batches. Reads are timed with and without `Store.read`'s prefetch. Training consumes about 1000 images/s; reads must be >= 10x that.

  python benchmarks/pack_store.py --n 100000          # ~8 GB of inputs + ~8 GB store, deleted after
  python benchmarks/pack_store.py --n 2000 --keep     # quick look; keeps the work directory

The last line printed is one JSON object with the results.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stargal_jax.data import formats, store

TRAINING_IMAGES_PER_S = 1000.0
CLASSES = np.array(["STAR", "GALAXY", "QSO"])


def _random_images(rng: np.random.Generator, n: int, nonfinite_fraction: float) -> np.ndarray:
  images = rng.standard_normal((n,) + formats.IMAGE_SHAPE, dtype=np.float32)
  edge = rng.random(n) < nonfinite_fraction
  images[edge, :, :, :3] = np.nan
  return images


def generate(root: Path, n: int, labelled_fraction: float, max_records: int, nonfinite_fraction: float,
             seed: int = 0) -> dict:
  """Writes labelled files (1..max_records records) and one-record unlabelled files, streaming."""
  rng = np.random.default_rng(seed)
  (root / "labelled").mkdir(parents=True)
  (root / "unlabelled").mkdir()
  n_labelled, written, files = int(n * labelled_fraction), 0, 0
  while written < n_labelled:
    k = min(int(rng.integers(1, max_records + 1)), n_labelled - written)
    classes = CLASSES[rng.choice(3, k, p=[0.25, 0.7, 0.05])]
    formats.write_labelled(root / "labelled" / f"{files:06d}.npy", np.arange(written, written + k),
                           _random_images(rng, k, nonfinite_fraction), classes, rng.random(k) * 0.5)
    written, files = written + k, files + 1
  for i in range(n - n_labelled):
    formats.write_unlabelled(root / "unlabelled" / f"{i:06d}.npy", _random_images(rng, 1, nonfinite_fraction))
  return {"n_labelled": n_labelled, "n_unlabelled": n - n_labelled, "labelled_files": files,
          "unlabelled_files": n - n_labelled}


def _child_pack(root: Path) -> dict:
  """Runs in a subprocess: packs both sets, then opens them again (reuse) and times both."""
  out = {}
  for kind in formats.KINDS:
    if not any((root / kind).iterdir()):  # e.g. --labelled-fraction 1
      continue
    start = time.perf_counter()
    packed = store.pack_store(root / kind, kind, root / "cache")
    out[f"pack_{kind}_s"] = time.perf_counter() - start
    out[f"{kind}_objects"] = len(packed)
    out[f"{kind}_nonfinite_objects"] = packed.summary["nonfinite"]["objects"]
    start = time.perf_counter()
    again = store.pack_store(root / kind, kind, root / "cache")
    out[f"reuse_{kind}_s"] = time.perf_counter() - start
    assert again.root == packed.root
  out["self_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return out


def _drop_cache(packed: store.Store) -> None:
  """Drops the images file's pages from the page cache (clean pages only; the store was fsynced)."""
  with open(packed.root / "images.npy", "rb") as f:
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _rate(batches: list, read) -> float:
  start = time.perf_counter()
  total = 0.0
  for images in read(batches):
    total += float(images[:, 2, 32, 32].sum())  # touch the result
  return sum(len(b) for b in batches) / (time.perf_counter() - start)


def _child_read(root: Path, batch_size: int, n_batches: int) -> dict:
  """Runs in a subprocess: shuffled batch reads of the labelled store, three ways cold, then warm.

  Each cold run reads different images (disjoint slices of one permutation), so none is served by a
  cache that an earlier run filled below this machine's page cache (a virtual disk's host cache)."""
  kind = "labelled" if any((root / "labelled").iterdir()) else "unlabelled"
  packed = store.pack_store(root / kind, kind, root / "cache")  # reuse, no pack
  every = list(packed.batch_indices(batch_size, seed=0, epoch=0))
  n_batches = min(n_batches, len(every) // 3)
  none, current, ahead = (every[i * n_batches:(i + 1) * n_batches] for i in range(3))
  plain = lambda batches: (packed.read(b, prefetch=False) for b in batches)
  per_batch = lambda batches: (packed.read(b) for b in batches)
  ahead_4 = lambda batches: packed.read_batches(batches, read_ahead=4)  # what iter_batches uses
  results = {"read_store": kind, "read_batches": n_batches,
             "store_images_gb": os.path.getsize(packed.root / "images.npy") / 1e9}
  for name, batches, read in (("cold_no_prefetch", none, plain), ("cold_prefetch_batch", current, per_batch),
                              ("cold_read_ahead_4", ahead, ahead_4)):
    _drop_cache(packed)
    results[f"read_{name}_images_per_s"] = _rate(batches, read)
  results["read_warm_read_ahead_4_images_per_s"] = _rate(ahead, ahead_4)
  results["read_warm_no_prefetch_images_per_s"] = _rate(ahead, plain)
  return results


def _run_child(*args: str) -> dict:
  result = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
  if result.returncode:
    raise RuntimeError(f"benchmark child {args[1]} failed (exit {result.returncode}); its stderr is above")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=100_000, help="total cutouts (labelled + unlabelled)")
  parser.add_argument("--labelled-fraction", type=float, default=0.6)
  parser.add_argument("--max-records", type=int, default=14)
  parser.add_argument("--nonfinite-fraction", type=float, default=0.01)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--read-batches", type=int, default=150, help="batches per timed read run")
  parser.add_argument("--workdir", default=None, help="parent of the temporary work directory")
  parser.add_argument("--keep", action="store_true", help="keep the generated files and stores")
  parser.add_argument("--child", choices=["pack", "read"], help=argparse.SUPPRESS)
  parser.add_argument("--root", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child == "pack":
    print(json.dumps(_child_pack(Path(args.root))))
    return
  if args.child == "read":
    print(json.dumps(_child_read(Path(args.root), args.batch_size, args.read_batches)))
    return

  root = Path(tempfile.mkdtemp(prefix="stargal_pack_bench_", dir=args.workdir))
  try:
    start = time.perf_counter()
    results = {"n": args.n, **generate(root, args.n, args.labelled_fraction, args.max_records,
                                       args.nonfinite_fraction)}
    results["generate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    results.update(_run_child("--child", "pack", "--root", str(root)))
    results["pack_process_wall_s"] = time.perf_counter() - start
    results["pack_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    results.update(_run_child("--child", "read", "--root", str(root), "--batch-size", str(args.batch_size),
                              "--read-batches", str(args.read_batches)))
    results["batch_size"] = args.batch_size
    for name in [k for k in results if k.endswith("_images_per_s")]:
      results[name.replace("_images_per_s", "_vs_training")] = results[name] / TRAINING_IMAGES_PER_S
    results["workdir"] = str(root) if args.keep else None
  finally:
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
  main()
