"""`python -m stargal_jax.data summarize`: counts what is in study files, without packing them.

Prints one JSON object with a summary per set given (files, objects, classes, non-finite and
out-of-bounds pixels and what was done with them, duplicate objIDs dropped, bad files skipped). A
bad input exits with status 2 and one line naming the file, the record and the problem on stderr.
"""

import argparse
import json
import sys

from stargal_jax.data import formats


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m stargal_jax.data", description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  summarize = commands.add_parser("summarize", help="count files, objects, classes and non-finite pixels")
  summarize.add_argument("--labelled", nargs="+", metavar="PATH", help="directory, glob or files (labelled)")
  summarize.add_argument("--unlabelled", nargs="+", metavar="PATH", help="directory, glob or files (unlabelled)")
  summarize.add_argument("--nan-policy", choices=formats.NAN_POLICIES, default="zero")
  summarize.add_argument("--skip-bad-files", action="store_true", help="skip and list bad files instead of failing")
  summarize.add_argument("--duplicates", choices=formats.DUPLICATE_POLICIES, default="raise",
                         help="a repeated objID: refuse the set, or keep its first occurrence and count the others")
  summarize.add_argument("--max-records-per-file", type=_positive_int, default=formats.MAX_RECORDS_PER_FILE,
                         metavar="N", help="refuse a file whose header declares more records (default %(default)s)")
  default_bounds = ",".join(f"{v:g}" for v in formats.PIXEL_BOUNDS)
  summarize.add_argument("--pixel-bounds", type=_bounds, default=formats.PIXEL_BOUNDS, metavar="LOW,HIGH",
                         help="pixels outside [LOW, HIGH] nanomaggies count as bad pixels, like non-finite ones; "
                              f"write --pixel-bounds={default_bounds} (the default) with '=' as LOW is negative")
  return parser


def _bounds(text: str) -> tuple[float, float]:
  try:
    return formats.check_pixel_bounds(text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"{e} (expected LOW,HIGH)") from None


def _positive_int(text: str) -> int:
  try:
    return formats.check_max_records(int(text))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  sets = {kind: spec for kind, spec in (("labelled", args.labelled), ("unlabelled", args.unlabelled)) if spec}
  if not sets:
    parser.error("give --labelled and/or --unlabelled")
  policies = dict(max_records_per_file=args.max_records_per_file, pixel_bounds=args.pixel_bounds,
                  duplicates=args.duplicates)
  try:
    result = {kind: formats.summarize(formats.resolve_paths(spec), kind, args.nan_policy, args.skip_bad_files,
                                      **policies)
              for kind, spec in sets.items()}
  except (formats.DataFormatError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
