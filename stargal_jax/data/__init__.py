"""The data layer: the study's .npy formats read safely, a packed memory-mapped store, normalisation.

  formats   - strict readers/writers for labelled (objID, image, class, z) and unlabelled (image) files
  store     - pack many small files once into one read-only memmap; deterministic shuffled batches
  normalize - per-band robust z-score or asinh normalisation fitted on a training sample

No jax import here: the data layer is plain numpy (normalize also accepts jax arrays).
"""

from stargal_jax.data.formats import (CLASS_CODES, IMAGE_SHAPE, LABELLED_DTYPE, NAN_POLICIES, UNLABELLED,
                                      UNLABELLED_DTYPE, BadFile, DataFormatError, FileRecords, is_galaxy,
                                      load_file, resolve_paths, summarize, write_labelled, write_unlabelled)
# The function `normalize` is not re-exported: it would hide the submodule `stargal_jax.data.normalize`.
from stargal_jax.data.normalize import NORMALIZERS, fit_normalizer, load_normalizer, save_normalizer
from stargal_jax.data.store import Store, load_store, open_dataset, pack_store
