"""Writes the evaluation report (`report.md`): tables of every score, the plots, and the config.

`metrics` maps a row name to that row's numbers, as `metrics.classification_metrics` returns them
(plain or after `to_json_safe`), plus two optional keys:
- `kind`: 'method' (default), 'baseline' (e.g. the classical morphology cuts) or 'ceiling'
  (the supervised reference, which may carry only `auc` and `accuracy`);
- `over_seeds`: {quantity: `metrics.summarize_over_seeds(...)`} for multi-seed studies.
Rows appear grouped by kind (methods, then baselines, then ceilings), in the order given within a
kind. Missing numbers print as "n/a"; a plot whose file is missing is listed as missing rather
than linked, so a report is always written.
"""

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

KIND_ORDER = ("method", "baseline", "ceiling")
SUMMARY_COLUMNS = (
    ("auc", "AUC (label-free)"),
    ("auc_best_sign", "AUC best sign (study)"),
    ("accuracy", "accuracy (prior threshold)"),
    ("galaxy_purity_at_96_completeness", "galaxy purity @ 96% galaxy completeness"),
    ("star_completeness_at_97_purity", "star completeness @ 97% star purity"),
)
LEGEND = (
    "AUC (label-free): galaxies positive, the score's sign chosen without labels from an "
    "extendedness measured on the images. AUC best sign: max(AUC, 1 - AUC), the figure the 2017 "
    "study reported; it uses the labels to pick the sign and is not unsupervised. Accuracy: the "
    "lowest prior-star-fraction of the score called point-like. Purity/completeness as in Kim & "
    "Brunner (2017). n/a: a target that cannot be reached, or a number not computed for that row."
)


def format_number(value: Any, digits: int = 4) -> str:
  """Fixed-point with `digits` decimals (integers as they are); None, NaN, non-numbers: 'n/a'."""
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return "n/a"
  if isinstance(value, int):
    return str(value)
  return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _ordered_rows(metrics: Mapping[str, dict]) -> list[tuple[str, dict]]:
  def rank(item):
    kind = item[1].get("kind", "method")
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
  return sorted(metrics.items(), key=rank)  # stable: keeps the given order within a kind


def _summary_section(rows) -> list[str]:
  header = ["name", "kind", *(title for _, title in SUMMARY_COLUMNS), "n"]
  body = [[name, entry.get("kind", "method"),
           *(format_number(entry.get(key)) for key, _ in SUMMARY_COLUMNS),
           format_number(entry.get("n"))] for name, entry in rows]
  return ["## Summary", "", *_table(header, body), "", LEGEND, ""]


def _by_mag_section(rows) -> list[str]:
  with_bins = [(name, entry["by_mag"]) for name, entry in rows if entry.get("by_mag")]
  if not with_bins:
    return []
  labels = [b["label"] for b in with_bins[0][1]]
  counts = [format_number(b.get("n")) for b in with_bins[0][1]]
  lines = ["## By r magnitude", "",
           "Each cell: AUC (label-free) / accuracy at the global prior threshold. "
           f"Objects per bin: {', '.join(f'{l}: {c}' for l, c in zip(labels, counts))}.", ""]
  body = [[name, *(f"{format_number(b.get('auc'))} / {format_number(b.get('accuracy'))}"
                   for b in bins)] for name, bins in with_bins]
  return lines + _table(["name", *labels], body) + [""]


def _seed_section(rows) -> list[str]:
  body = []
  for name, entry in rows:
    for quantity, summary in (entry.get("over_seeds") or {}).items():
      body.append([name, quantity, format_number(summary.get("mean")),
                   format_number(summary.get("std")), format_number(summary.get("min")),
                   format_number(summary.get("max")),
                   f"[{format_number(summary.get('ci95_low'))}, "
                   f"{format_number(summary.get('ci95_high'))}]",
                   format_number(summary.get("n"))])
  if not body:
    return []
  header = ["name", "quantity", "mean", "std", "min", "max", "95% CI of mean (t)", "seeds"]
  return ["## Stability over seeds", "", *_table(header, body), ""]


def _notes_section(rows) -> list[str]:
  notes = []
  for name, entry in rows:
    notes += [f"- {name}: {note}" for note in entry.get("notes") or []]
    for b in entry.get("by_mag") or []:
      notes += [f"- {name}, {b['label']}: {note}" for note in b.get("notes") or []]
  return ["## Notes", "", *notes, ""] if notes else []


def _plots_section(workdir: Path, plots: Mapping[str, str], heading: str = "Plots") -> list[str]:
  if not plots:
    return []
  lines = [f"## {heading}", ""]
  for name, relative_path in plots.items():
    if (workdir / relative_path).is_file():
      lines += [f"### {name}", "", f"![{name}]({Path(relative_path).as_posix()})", ""]
    else:
      lines += [f"### {name}", "", f"(missing: `{relative_path}` was not written)", ""]
  return lines


def write_report(workdir, metrics: Mapping[str, dict], plots: Mapping[str, str],
                 config_summary: str, title: str = "stargal_jax evaluation",
                 curves: Mapping[str, str] | None = None) -> Path:
  """Writes `workdir/report.md` (tables, embedded plots, training curves, config) and returns its path.

  `plots` and `curves` (one loss-curve figure per trained stage, `stargal_jax.curves`) map a caption to a path
  relative to `workdir`; `config_summary` is printed verbatim.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  rows = _ordered_rows(metrics)
  lines = [f"# {title}", ""]
  lines += _summary_section(rows)
  lines += _by_mag_section(rows)
  lines += _seed_section(rows)
  lines += _notes_section(rows)
  lines += _plots_section(workdir, plots)
  lines += _plots_section(workdir, curves or {}, heading="Training curves")
  lines += ["## Config", "", "```", config_summary.rstrip("\n"), "```", ""]
  path = workdir / "report.md"
  path.write_text("\n".join(lines), encoding="utf-8")
  return path
