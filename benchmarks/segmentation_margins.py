"""The issue's targets with their scatter, over every distribution a protocol output folder holds.

Usage: python benchmarks/segmentation_margins.py OUT [--figure PATH]
OUT is a `segmentation_protocol.py` output folder, or holds one per distribution (OUT/<name>/, as
`segmentation_protocol.sh` writes them); prints one markdown table (margin of the full method over the best
baseline and its 5-95% paired-bootstrap interval per target) and draws `segment.figures.plot_check_margins`.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stargal_jax.segment import figures  # noqa: E402


def collect(out: Path) -> dict[str, dict]:
  """distribution -> its check margins, the default data first, then in the order the folders sort."""
  margins = {}
  below = sorted(out.glob("*/segmentation_protocol.json"), key=lambda p: (p.parent.name != "default", p.parent.name))
  for path in [*out.glob("segmentation_protocol.json"), *below]:
    for name, d in json.loads(path.read_text()).get("distributions", {}).items():
      if "check_margins" in d:  # JSON writes an undefined margin as null
        margins[name] = {t: {k: float("nan") if v is None else v for k, v in m.items()}
                         for t, m in d["check_margins"].items()}
  return margins


def table_lines(margins: dict[str, dict]) -> list[str]:
  targets = list(dict.fromkeys(t for m in margins.values() for t in m))
  lines = ["| data | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
  for name, m in margins.items():
    cells = [f"{m[t]['margin']:+.3f} [{m[t]['p5']:+.3f}, {m[t]['p95']:+.3f}] {m[t]['verdict']}"
             if t in m and m[t]["verdict"] != "undefined" else "-" for t in targets]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("--figure", default=None, help="PNG path (default: OUT/check_margins.png)")
  args = parser.parse_args(argv)
  out = Path(args.out)
  margins = collect(out)
  if not margins:
    raise SystemExit(f"{out}: no segmentation_protocol.json with check margins below it")
  print("\n".join(table_lines(margins)))
  path = figures.plot_check_margins(margins, args.figure or out / "check_margins.png")
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
