"""Entry point: `python launch.py --config=configs/cvae.py --workdir=DIR [--config.key=value ...] [--multihost]`.

The only module that reads flags. Everything else takes the resolved `config`. `--multihost` runs one process per
host (TPU pod, GPU cluster, or several local CPU processes) as one JAX program: start the same command in every
process (see `stargal_jax.distributed.initialize`).
"""

import os

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
    raise SystemExit(f"FATAL Flags parsing error: the config has no setting {str(error).strip(chr(34))} "
                     f"(from a --config.KEY=VALUE override)\n{_HELP}") from None


def main(argv):
  del argv
  if logging.get_verbosity() == logging.INFO and "--verbosity" not in " ".join(os.sys.argv):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO; progress is printed.
  from stargal_jax import distributed  # Imported after flags are parsed so `--help` stays fast.
  distributed.initialize(_MULTIHOST.value)  # Before anything else uses jax.
  from stargal_jax import experiment
  experiment.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
