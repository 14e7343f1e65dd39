"""The robustness protocol: designs judged on the default data, shifted simulations and real SDSS frames.

`python -m stargal_jax.robustness --config cvae.py=20 --config vae_manifold.py=5 --distributions all --size full
--out runs/robustness` runs every config (with its number of seeds) on every distribution (`shifts.DISTRIBUTIONS`
and the real frames, `real_sdss`), one cell each (`cells`), with the supervised ceilings of each cell's
representations (`ceilings`), and writes one markdown table and its JSON (`table`). Cells are cached: a finished
cell is never rerun, an unfinished one resumes from its checkpoints.
"""

from stargal_jax.robustness.cells import REAL, SIZES, CellSpec, cell_config, load_config
from stargal_jax.robustness.protocol import all_distributions, run_protocol

__all__ = ["REAL", "SIZES", "CellSpec", "all_distributions", "cell_config", "load_config", "run_protocol"]
