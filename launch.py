"""Entry point: `python launch.py --config=configs/cvae.py --workdir=DIR [--config.key=value ...] [--multihost]`.

The only module that reads flags. Everything else takes the resolved `config`. `--multihost` runs one process per
host (TPU pod, GPU cluster, or several local CPU processes) as one JAX program: start the same command in every
process (see `stargal_jax.distributed.initialize`).

A user's mistake (a bad flag or setting, a bad input file, a workdir holding another run or in use by one, a
diverged training, no intact checkpoint) ends the run with one line `error: ...` on stderr and exit status 2;
`--verbosity=1` or `STARGAL_TRACEBACK=1` shows the traceback instead.
"""

import importlib.util
import os
import sys

from stargal_jax import host_runtime

# Before jax starts: one XLA CPU device per core, XLA's own convolutions, freed memory kept for reuse (each
# measured faster on CPU; see stargal_jax/host_runtime.py). No effect on GPU/TPU backends.
host_runtime.configure()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cvae.py[:smoke].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, plots, report).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Several processes as one program: jax.distributed.initialize() "
                                "(TPU pods, SLURM, Open MPI detected; else JAX_COORDINATOR_ADDRESS, "
                                "JAX_NUM_PROCESSES, JAX_PROCESS_ID). Outputs are written by process 0.")
flags.mark_flags_as_required(["config", "workdir"])
_HELP = "Pass --helpshort or --helpfull to see help on flags."


def _load_config(spec: str):
  """`configs/x.py[:arg]` -> its get_config(arg), loaded as config_flags does (to name what an override missed)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_launch_config", path)
  module = importlib.util.module_from_spec(module_spec)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(path))))
  try:
    module_spec.loader.exec_module(module)
  finally:
    sys.path.pop(0)
  return module.get_config(arg or None)


def unknown_override(argv: list[str]) -> str | None:
  """The first `--config.a.b=v` naming a setting the config lacks: which part is missing and the valid keys."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  try:
    config = _load_config(spec)
  except Exception:  # the config's own error is reported by absl
    return None
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    block, seen = config, []
    for part in arg[len("--config."):].split("=", 1)[0].split("."):
      keys = sorted(block.keys()) if hasattr(block, "keys") else []
      if part not in keys:
        where = "config." + ".".join(seen) if seen else "the config"
        return f"{arg}: {where} has no setting {part!r}; valid: {keys}"
      block = block[part]
      seen.append(part)
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a config's own error (e.g. an unknown `:argument`) on one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if "Traceback (most recent call last):" in lines:  # ml_collections puts the config's traceback in the message
      lines = [lines[0].rstrip(":"), lines[-1]]
    raise SystemExit(f"FATAL Flags parsing error: {' '.join(lines)}\n{_HELP}") from None
  except (AttributeError, KeyError) as error:  # a --config.a.b=v override of a key the config does not have
    missing = unknown_override(argv) or (f"the config has no setting {str(error).splitlines()[0].strip(chr(34))} "
                                         f"(from a --config.KEY=VALUE override)")
    raise SystemExit(f"FATAL Flags parsing error: {missing}\n{_HELP}") from None


def _show_traceback() -> bool:
  return os.environ.get("STARGAL_TRACEBACK", "") not in ("", "0") or logging.get_verbosity() >= logging.DEBUG


def main(argv):
  del argv
  if logging.get_verbosity() == logging.INFO and "--verbosity" not in " ".join(sys.argv):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO; progress is printed.
  from stargal_jax import distributed  # Imported after flags are parsed so `--help` stays fast.
  distributed.initialize(_MULTIHOST.value)  # Before anything else uses jax.
  from stargal_jax import experiment
  try:
    experiment.run(_CONFIG.value, _WORKDIR.value)
  except experiment.USER_ERRORS as error:
    if _show_traceback():
      raise
    print("error: " + "; ".join(line.strip() for line in str(error).splitlines() if line.strip()), file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
