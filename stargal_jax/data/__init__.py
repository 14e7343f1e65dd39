"""The data layer: the study's .npy formats read safely, a packed memory-mapped store, normalisation.

  formats   - strict readers/writers for labelled (objID, image, class, z) and unlabelled (image) files:
              bad files, records, objIDs and pixels refused or counted by name (`Reader`)
  store     - pack many small files once into one read-only memmap; deterministic shuffled batches;
              the rows behind a failing batch (`Store.suspect_rows`); cache locks
  normalize - per-band robust z-score or asinh normalisation fitted on a training sample

No jax import here: the data layer is plain numpy (normalize also accepts jax arrays).
"""

from stargal_jax.data.formats import (CLASS_CODES, DUPLICATE_POLICIES, IMAGE_SHAPE, LABELLED_DTYPE,
                                      MAX_RECORDS_PER_FILE, NAN_POLICIES, PIXEL_BOUNDS, UNLABELLED, UNLABELLED_DTYPE,
                                      BadFile, DataFormatError, DuplicateObjIDError, FileRecords, Reader, is_galaxy,
                                      load_file, resolve_paths, summarize, write_labelled, write_unlabelled)
# The function `normalize` is not re-exported: it would hide the submodule `stargal_jax.data.normalize`.
from stargal_jax.data.normalize import NORMALIZERS, fit_normalizer, load_normalizer, save_normalizer
from stargal_jax.data.store import Store, describe_rows, exclusive_lock, load_store, open_dataset, pack_store
