"""Markdown table of `configs/bootstrap.py` runs: `python benchmarks/bootstrap_table.py NAME=RUN_DIR [...]`.

One row per run (its `metrics.json`, `config.json` and `bootstrap.json`): the bootstrapped CNN's label-free AUC
overall and per r bin, the best classical label-free index of the same run (the one with the highest overall
AUC, and per bin the best of them in that bin), the supervised CNN reference (`eval.supervised_cnn`), the
margins the issue asks for (method - best classical, method - supervised CNN), the bright end's pseudo-label
counts and the wall time. NAME labels the data distribution.
"""

import json
import sys
from pathlib import Path


def fmt(x, digits=3) -> str:
  return "n/a" if x is None else f"{x:.{digits}f}"


def by_mag(m: dict) -> list:
  return [b["auc"] for b in m["by_mag"]]


def row(name: str, run: Path) -> str:
  m = json.loads((run / "metrics.json").read_text())
  bright = json.loads((run / "bootstrap.json").read_text())["bright_end"]
  baselines = m["baselines"]
  best = max(baselines, key=lambda k: baselines[k]["auc"])
  best_bins = [max((by_mag(v)[i] for v in baselines.values() if by_mag(v)[i] is not None), default=None)
               for i in range(len(m["by_mag"]))]
  method, method_bins = m["auc"], by_mag(m)
  cnn = m.get("supervised_cnn")
  bins = " / ".join(fmt(a) for a in method_bins)
  classical = f"{fmt(baselines[best]['auc'])} `{best}` ({' / '.join(fmt(a) for a in best_bins)})"
  margins = " / ".join(fmt(a - b, 3) if a is not None and b is not None else "n/a" for a, b in zip(method_bins, best_bins))
  reference = "n/a" if cnn is None else f"{fmt(cnn['auc'])} ({' / '.join(fmt(a) for a in by_mag(cnn))})"
  gap = "n/a" if cnn is None else fmt(method - cnn["auc"])
  return (f"| {name} | {fmt(method)} ({bins}) | {classical} | {fmt(method - baselines[best]['auc'])} ({margins}) | "
          f"{reference} | {gap} | {bright['n_pseudo_star']} / {bright['n_pseudo_galaxy']} | {m['wall_seconds']:.0f} |")


def main(specs: list[str]) -> None:
  if not specs:
    sys.exit(__doc__)
  print("| data | bootstrap CNN AUC (r<19 / 19-21 / >=21) | best classical index (per-bin best) | bootstrap - "
        "classical (per bin) | supervised CNN (per bin) | bootstrap - supervised | pseudo stars / galaxies | wall s |")
  print("|---|---|---|---|---|---|---|---|")
  for spec in specs:
    name, _, path = spec.partition("=")
    print(row(name, Path(path)))


if __name__ == "__main__":
  main(sys.argv[1:])
