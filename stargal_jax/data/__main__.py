"""`python -m stargal_jax.data summarize`: counts what is in study files, without packing them.

Prints one JSON object with a summary per set given (files, objects, classes, non-finite pixels and
what was done with them, bad files skipped). A bad input exits with status 2 and a message naming
the file, the record and the problem on stderr.
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
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  sets = {kind: spec for kind, spec in (("labelled", args.labelled), ("unlabelled", args.unlabelled)) if spec}
  if not sets:
    parser.error("give --labelled and/or --unlabelled")
  try:
    result = {kind: formats.summarize(formats.resolve_paths(spec), kind, args.nan_policy, args.skip_bad_files)
              for kind, spec in sets.items()}
  except (formats.DataFormatError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
