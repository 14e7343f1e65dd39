"""Central-object IoU by true r magnitude: a finished segmentation run's masks against SEP on the same cutouts.

`python benchmarks/segmentation_by_magnitude.py --workdir=RUN [--n=1500] [--band=gri --thresh=1.0]`

RUN is a `configs/segmentation.py` workdir on the embedded (simulated) data: its `segmentation.npz` masks are
scored against the simulator's truth beside SEP with the given detection band and threshold (the run's tuned
setting is in its metrics.json), in bins of the central object's true r magnitude. Prints a markdown table.
"""

import argparse
import json
from pathlib import Path

import ml_collections
import numpy as np

from stargal_jax import BANDS, inputs as inputs_lib
from stargal_jax.segment import scoring, sep_baseline

EDGES = (17.0, 19.0, 20.0, 21.0, 22.0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--n", type=int, default=1500, help="first n labelled cutouts")
  parser.add_argument("--band", default="gri")
  parser.add_argument("--thresh", type=float, default=1.0)
  args = parser.parse_args()
  workdir = Path(args.workdir)
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  inputs = inputs_lib.load_inputs(config.data, seed=config.seed)
  if inputs.truth is None:
    raise SystemExit("this needs the embedded simulated data (truth masks)")
  n = min(args.n, len(inputs.labelled))
  truth = scoring.subset_truth(inputs.truth, n)
  images = inputs.labelled.read(np.arange(n))
  central_mag = np.asarray(truth["mag"])[:, BANDS.index("r")]
  ours = np.load(workdir / "segmentation.npz", allow_pickle=False)["mask"][:n]
  sep_masks = sep_baseline.sep_segment(images, args.band, args.thresh, **sep_baseline.sep_kwargs(config.seg))
  rows = {}
  for name, masks in (("ours", ours), (f"SEP ({args.band}, {args.thresh:g} sigma)", sep_masks)):
    scores = scoring.score_masks(masks, truth["mask"], scoring.truth_neighbour_table(truth), EDGES,
                                 central_mag=central_mag)
    rows[name] = [scores["central_iou"]] + [b["central_iou"] for b in scores["central_iou_by_mag"]]
    found = [(masks[(central_mag >= lo) & (central_mag < hi)] == 1).any(axis=(1, 2)).mean()
             for lo, hi in zip((-np.inf,) + EDGES, EDGES + (np.inf,))]
    rows[name + ": central found"] = [scoring.central_found_fraction(masks)] + found
  counts = [n] + [b["n"] for b in scores["central_iou_by_mag"]]
  labels = (["all", f"< {EDGES[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(EDGES[:-1], EDGES[1:])]
            + [f">= {EDGES[-1]:g}"])
  print(f"central-object IoU by true r magnitude, first {n} labelled cutouts of {workdir}")
  print("| | " + " | ".join(f"{l} (n={c})" for l, c in zip(labels, counts)) + " |")
  print("|---|" + "---|" * len(labels))
  for name, values in rows.items():
    print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
  main()
