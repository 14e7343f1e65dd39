"""`python -m stargal_jax.predict`: classify new cutouts or a whole SDSS field with a finished run and write an
astronomer's catalogue (FITS / ECSV / CSV) and, for a field, its segmentation map (`stargal_jax.predict.cli`).

From Python: `load_run` and `score_cutouts` (`stargal_jax.classify.predict`) score new cutouts as the run scored
its own labelled set; `main(argv)` is the command.
"""

from stargal_jax.classify.predict import MIN_OBJECTS, TrainedRun, load_run, score_cutouts
from stargal_jax.predict.cli import main

__all__ = ["MIN_OBJECTS", "TrainedRun", "load_run", "main", "score_cutouts"]
