"""The study's `.npy` formats: labelled (objID, image, class, z) and unlabelled (image) records.

Reading is strict and safe. The `.npy` header is parsed and checked (magic, dtype, fields, image
shape, file size, 1 to `max_records_per_file` records) before any data is read, and the data is
then read as raw bytes, `CHUNK_RECORDS` records at a time, into arrays of the validated dtype, so
nothing is ever unpickled and memory stays bounded whatever a file declares. Each chunk is checked
record by record: known classes, objIDs that fit int64, pixels finite and within `pixel_bounds`
(the non-finite policy applies to both kinds of bad pixel, counted apart). Across files, an objID
may appear once (`duplicates`). A bad file raises `DataFormatError` naming the file, the record
(where one is to blame) and the problem. `Reader` is the single validation path: the packed store
and the `summarize` CLI both go through it.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from stargal_jax import registry

IMAGE_SHAPE = (5, 64, 64)
LABELLED_DTYPE = np.dtype([("objID", "<i8"), ("image", "<f4", IMAGE_SHAPE), ("class", "<U6"), ("z", "<f8")])
UNLABELLED_DTYPE = np.dtype([("image", "<f4", IMAGE_SHAPE)])
CLASS_CODES = {"STAR": 0, "GALAXY": 1, "QSO": 2}
UNLABELLED = -1
KINDS = ("labelled", "unlabelled")
NAN_POLICIES = ("zero", "drop", "raise")
DUPLICATE_POLICIES = ("raise", "keep_first")
# The study's files hold 1-14 records (labelled) or one (unlabelled); 100k records is an 8 GB file.
# A header beyond this is refused before anything is read or allocated.
MAX_RECORDS_PER_FILE = 100_000
# Physically possible pixel values, nanomaggies. An SDSS frame pixel saturates at the 16-bit ADC
# ceiling (65535 DN less the 1000 DN soft bias) times the calibration, at most ~0.04 nmgy/DN (z
# band): about 2.6e3 nmgy; the eight DR17 frames in shared/data measure -1.0 to 2316. Sky-subtracted
# noise is well below 1 nmgy, so nothing real falls below -1e3. The bounds leave 400x headroom above
# saturation for other calibrations; beyond them a value is a corrupt or unconverted pixel.
PIXEL_BOUNDS = (-1e3, 1e6)
CHUNK_RECORDS = 256  # records read at once: about 21 MB of images, whatever a file holds
_INT64_MAX = np.iinfo(np.int64).max
PathSpec = str | os.PathLike | Sequence[str | os.PathLike]  # a directory, a glob, a file, or a list of them
_FIELDS = {"labelled": ("objID", "image", "class", "z"), "unlabelled": ("image",)}


def write_labelled(path, objID, images, classes, z) -> None:
  """Writes one labelled file (several records) exactly as the study stored them."""
  records = np.zeros(len(images), dtype=LABELLED_DTYPE)
  records["objID"], records["image"], records["class"], records["z"] = objID, images, classes, z
  np.save(Path(path), records, allow_pickle=False)


def write_unlabelled(path, images) -> None:
  """Writes one unlabelled file; the study stored one record per file."""
  records = np.zeros(len(images), dtype=UNLABELLED_DTYPE)
  records["image"] = images
  np.save(Path(path), records, allow_pickle=False)


class DataFormatError(ValueError):
  """An input file that is not a valid study file; the message names the file and the problem."""


class DuplicateObjIDError(DataFormatError):
  """An objID seen twice. Not a bad file that `skip_bad_files` may skip: which copy is right is unknown."""


def is_galaxy(labels: np.ndarray) -> np.ndarray:
  """Galaxies are the positive class; stars and QSOs (point-like) and unlabelled are not."""
  return np.asarray(labels) == CLASS_CODES["GALAXY"]


def check_kind(kind: str) -> str:
  return registry.check_choice(kind, KINDS, "data kind")


def check_nan_policy(nan_policy: str) -> str:
  return registry.check_choice(nan_policy, NAN_POLICIES, "nan_policy")


def check_duplicates(duplicates: str) -> str:
  if duplicates not in DUPLICATE_POLICIES:
    raise ValueError(f"unknown duplicates policy {duplicates!r}; valid policies: {', '.join(DUPLICATE_POLICIES)}")
  return duplicates


def check_max_records(max_records_per_file: int) -> int:
  if isinstance(max_records_per_file, bool) or not isinstance(max_records_per_file, (int, np.integer)) \
      or max_records_per_file < 1:
    raise ValueError(f"max_records_per_file must be a positive integer, got {max_records_per_file!r}")
  return int(max_records_per_file)


def check_pixel_bounds(pixel_bounds: Sequence[float]) -> tuple[float, float]:
  try:
    lo, hi = (float(v) for v in pixel_bounds)
  except (TypeError, ValueError):
    raise ValueError(f"pixel_bounds must be two numbers (low, high), got {pixel_bounds!r}") from None
  if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
    raise ValueError(f"pixel_bounds must be finite with low < high, got {pixel_bounds!r}")
  return lo, hi


@dataclasses.dataclass(frozen=True)
class Header:
  """What a validated `.npy` header says: enough to count records and read the data raw."""
  path: Path
  dtype: np.dtype
  shape: tuple
  data_offset: int

  @property
  def n_records(self) -> int:
    return math.prod(self.shape)  # exact Python ints: a hostile header cannot overflow it


@dataclasses.dataclass(frozen=True)
class FileRecords:
  """The valid objects of one file (or of one chunk of it), with provenance and what the policies did."""
  path: Path
  images: np.ndarray  # float32 (n, 5, 64, 64), native byte order, finite and within bounds
  labels: np.ndarray  # int8 (n,): CLASS_CODES, or UNLABELLED
  objID: np.ndarray  # int64 (n,); -1 for unlabelled files (provenance is file + record)
  z: np.ndarray  # float32 (n,); NaN for unlabelled files
  record: np.ndarray  # int32 (n,): position of each object in its file
  n_records: int  # records read (of the file, or of this chunk), before any were dropped
  nonfinite_objects: int  # records with at least one non-finite pixel
  nonfinite_pixels: int
  out_of_bounds_objects: int = 0  # records with at least one finite pixel outside the pixel bounds
  out_of_bounds_pixels: int = 0
  duplicates_dropped: int = 0  # records dropped as repeats of an objID seen before (duplicates='keep_first')

  def select(self, keep: np.ndarray) -> "FileRecords":
    return dataclasses.replace(self, images=self.images[keep], labels=self.labels[keep], objID=self.objID[keep],
                               z=self.z[keep], record=self.record[keep])


@dataclasses.dataclass(frozen=True)
class BadFile:
  """A file refused while `skip_bad_files` is on: listed, never silently dropped."""
  path: Path
  reason: str


def _fail(path: Path, problem: str, record: int | None = None, error: type = DataFormatError) -> DataFormatError:
  where = f"{path}" if record is None else f"{path}, record {record}"
  return error(f"{where}: {problem}")


def _field_problem(dtype: np.dtype, kind: str) -> str | None:
  """Why `dtype` is not a record of `kind`, or None when it is."""
  expected = _FIELDS[kind]
  if dtype.names is None:
    return f"expected a structured array with fields {expected}, got plain dtype {dtype}"
  missing = [n for n in expected if n not in dtype.names]
  extra = [n for n in dtype.names if n not in expected]
  if missing or extra:
    return f"fields {dtype.names} do not match {kind} fields {expected} (missing {missing}, extra {extra})"
  image = dtype.fields["image"][0]
  if image.shape != IMAGE_SHAPE:
    return f"field 'image' has shape {image.shape}, expected {IMAGE_SHAPE}"
  if image.base.kind != "f" or image.base.itemsize != 4:
    return f"field 'image' has dtype {image.base}, expected float32"
  if kind == "labelled":
    kinds = {"objID": ("iu", "an integer"), "class": ("US", "a string"), "z": ("f", "a float")}
    for name, (allowed, what) in kinds.items():
      field = dtype.fields[name][0]
      if field.shape != () or field.kind not in allowed:
        return f"field {name!r} has dtype {field.str}{field.shape or ''}, expected {what} scalar"
  return None


def read_header(path: str | os.PathLike, kind: str, max_records_per_file: int = MAX_RECORDS_PER_FILE) -> Header:
  """Parses and validates a `.npy` header without reading the data (cheap: counts records)."""
  path, kind, limit = Path(path), check_kind(kind), check_max_records(max_records_per_file)
  try:
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
      if version not in read:
        raise ValueError(f"unsupported .npy format version {version}")
      shape, fortran_order, dtype = read[version](f)
      data_offset = f.tell()
  except OSError as e:
    raise _fail(path, f"cannot read file ({e.strerror or e})") from e
  except (ValueError, SyntaxError, EOFError, TypeError) as e:
    raise _fail(path, f"not a valid .npy file (truncated or corrupt header): {e}") from e
  if dtype.hasobject:
    raise _fail(path, "holds Python objects (pickled data); refused, never unpickled")
  problem = _field_problem(dtype, kind)
  if problem:
    raise _fail(path, problem)
  if len(shape) > 1:
    raise _fail(path, f"records must form a 1-D array (or a 0-d scalar), got shape {shape}")
  if any(d < 0 for d in shape):
    raise _fail(path, f"not a valid .npy file: negative shape {shape} in the header")
  header = Header(path, dtype, tuple(shape), data_offset)
  n = header.n_records
  expected = data_offset + n * dtype.itemsize
  size = path.stat().st_size
  if size != expected:
    state = "truncated" if size < expected else "has trailing bytes (corrupt)"
    raise _fail(path, f"file {state}: {size} bytes, header implies {expected} for {n} records")
  if n == 0:
    raise _fail(path, "holds 0 records (an empty file): a bad file (skip_bad_files lists and skips it)")
  if n > limit:
    raise _fail(path, f"header declares {n} records, over the limit of {limit} per file (max_records_per_file); "
                      "refused before reading")
  return header


def _read_chunks(header: Header, chunk_records: int) -> Iterator[tuple[int, np.ndarray]]:
  """(first record, raw records) for consecutive chunks of the validated data (no pickle, bounded memory)."""
  n = header.n_records
  with open(header.path, "rb") as f:
    f.seek(header.data_offset)
    for start in range(0, n, chunk_records):
      records = np.empty(min(chunk_records, n - start), dtype=header.dtype)
      got = f.readinto(memoryview(records.view(np.uint8)))
      if got != records.nbytes:  # the file shrank after the header check
        raise _fail(header.path, f"file truncated: read {got} of {records.nbytes} data bytes", start)
      yield start, records


def _class_codes(path: Path, classes: np.ndarray, start: int = 0) -> np.ndarray:
  """Maps the class column to CLASS_CODES; an unknown string names its first record."""
  values, inverse = np.unique(classes, return_inverse=True)
  codes = np.empty(len(values), dtype=np.int8)
  for i, value in enumerate(values):
    try:
      text = value.decode("ascii") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
      text = None
    code = CLASS_CODES.get(text.strip()) if text is not None else None
    if code is None:
      first = start + int(np.flatnonzero(inverse == i)[0])
      shown = repr(bytes(value)) if isinstance(value, bytes) else repr(str(value))
      raise _fail(path, f"unknown class {shown}; valid classes: {', '.join(CLASS_CODES)}", first)
    codes[i] = code
  return codes[inverse.reshape(-1)]


def _obj_ids(path: Path, values: np.ndarray, start: int) -> np.ndarray:
  """The objID column as int64; a uint64 beyond int64 (it would wrap to a negative ID) names its record."""
  if values.dtype.kind == "u" and values.dtype.itemsize == 8:
    beyond = np.flatnonzero(values > _INT64_MAX)
    if len(beyond):
      first = int(beyond[0])
      raise _fail(path, f"objID {int(values[first])} is outside int64 (SDSS objIDs fit in int64; "
                        f"{len(beyond)} such records in this chunk)", start + first)
  return values.astype(np.int64)


def _pixel_problem(nonfinite: int, beyond: int, bounds: tuple[float, float], example: float | None) -> str:
  parts = [f"{nonfinite} non-finite pixels"] if nonfinite else []
  if beyond:
    parts.append(f"{beyond} pixels outside [{bounds[0]:g}, {bounds[1]:g}] nanomaggies (e.g. {example:g}; "
                 "physically impossible)")
  return " and ".join(parts) + " (nan_policy='raise')"


def _check_chunk(path: Path, kind: str, records: np.ndarray, start: int, nan_policy: str,
                 pixel_bounds: tuple[float, float]) -> FileRecords:
  """Validates one chunk of raw records and applies the bad-pixel policy to it."""
  n = len(records)
  images = np.ascontiguousarray(records["image"], dtype=np.float32)  # native byte order
  if kind == "labelled":
    labels = _class_codes(path, records["class"], start)
    objID = _obj_ids(path, records["objID"], start)
    z = records["z"].astype(np.float32)
  else:
    labels = np.full(n, UNLABELLED, np.int8)
    objID = np.full(n, -1, np.int64)
    z = np.full(n, np.nan, np.float32)
  flat = images.reshape(n, -1)
  lo, hi = pixel_bounds
  # Per-record min and max find both kinds of bad pixel in two fast reductions (NaN propagates
  # through them and compares False); only the few flagged records are looked at pixel by pixel.
  bad_records = np.flatnonzero(~((flat.min(axis=1) >= lo) & (flat.max(axis=1) <= hi)))
  keep = np.ones(n, bool)
  nonfinite_per_record = beyond_per_record = np.zeros(0, np.int64)
  if len(bad_records):
    pixels = flat[bad_records]
    nonfinite = ~np.isfinite(pixels)
    beyond = ~nonfinite & ((pixels < lo) | (pixels > hi))
    nonfinite_per_record, beyond_per_record = nonfinite.sum(axis=1), beyond.sum(axis=1)
    if nan_policy == "raise":
      example = float(pixels[0][beyond[0]][0]) if beyond_per_record[0] else None
      raise _fail(path, _pixel_problem(int(nonfinite_per_record[0]), int(beyond_per_record[0]), pixel_bounds,
                                       example), start + int(bad_records[0]))
    if nan_policy == "zero":
      pixels[nonfinite | beyond] = 0.0
      flat[bad_records] = pixels
    else:
      keep[bad_records] = False
  record = np.arange(start, start + n, dtype=np.int32)
  if not keep.all():  # (a copy: only when something was dropped)
    images, labels, objID, z, record = images[keep], labels[keep], objID[keep], z[keep], record[keep]
  return FileRecords(
      path=path, images=images, labels=labels, objID=objID, z=z, record=record, n_records=n,
      nonfinite_objects=int(np.count_nonzero(nonfinite_per_record)), nonfinite_pixels=int(nonfinite_per_record.sum()),
      out_of_bounds_objects=int(np.count_nonzero(beyond_per_record)), out_of_bounds_pixels=int(beyond_per_record.sum()))


def iter_file_chunks(header: Header, kind: str, nan_policy: str = "zero",
                     pixel_bounds: Sequence[float] = PIXEL_BOUNDS) -> Iterator[FileRecords]:
  """The checked records of one file, `CHUNK_RECORDS` at a time (a bad record raises mid-file)."""
  kind, nan_policy, bounds = check_kind(kind), check_nan_policy(nan_policy), check_pixel_bounds(pixel_bounds)
  for start, records in _read_chunks(header, CHUNK_RECORDS):
    yield _check_chunk(header.path, kind, records, start, nan_policy, bounds)


class ObjIDs:
  """The objIDs seen so far, for the duplicate check across records and files.

  A file's objIDs are held as pending until `commit` (the whole file was good) or `discard` (it was
  skipped as a bad file), so a skipped file claims no objID."""

  def __init__(self, duplicates: str = "raise"):
    self.duplicates = check_duplicates(duplicates)
    self._files: list[Path] = []
    self._seen: dict[int, int] = {}  # objID -> file number << 32 | record (an int each: memory)
    self._pending: dict[int, int] = {}

  def filter(self, chunk: FileRecords) -> FileRecords:
    """The chunk without repeats of objIDs seen before (keep_first), or DuplicateObjIDError (raise)."""
    if not self._files or self._files[-1] != chunk.path:
      self._files.append(chunk.path)
    file_number = len(self._files) - 1
    keep = None
    for i, (obj, record) in enumerate(zip(chunk.objID.tolist(), chunk.record.tolist())):
      seen = self._seen.get(obj, self._pending.get(obj))
      if seen is None:
        self._pending[obj] = file_number << 32 | record
        continue
      if self.duplicates == "raise":
        where = f"{self._files[seen >> 32]}, record {seen & 0xFFFFFFFF}"
        raise _fail(chunk.path, f"objID {obj} already in {where} (duplicate objIDs give duplicate rows; "
                                "duplicates='keep_first' keeps the first and counts the others)", record,
                    DuplicateObjIDError)
      if keep is None:
        keep = np.ones(len(chunk.objID), bool)
      keep[i] = False
    if keep is None:
      return chunk
    return dataclasses.replace(chunk.select(keep), duplicates_dropped=int((~keep).sum()))

  def commit(self) -> None:
    self._seen.update(self._pending)
    self._pending.clear()

  def discard(self) -> None:
    self._pending.clear()


def load_file(path: str | os.PathLike, kind: str, nan_policy: str = "zero", *,
              max_records_per_file: int = MAX_RECORDS_PER_FILE, pixel_bounds: Sequence[float] = PIXEL_BOUNDS,
              duplicates: str = "raise") -> FileRecords:
  """Reads and validates one whole study file (in memory; `Reader` streams instead)."""
  nan_policy, duplicates = check_nan_policy(nan_policy), check_duplicates(duplicates)
  header = read_header(path, kind, max_records_per_file)
  ids = ObjIDs(duplicates) if kind == "labelled" else None
  chunks = [ids.filter(c) if ids else c for c in iter_file_chunks(header, kind, nan_policy, pixel_bounds)]
  if len(chunks) == 1:
    return chunks[0]
  joined = {name: np.concatenate([getattr(c, name) for c in chunks])
            for name in ("images", "labels", "objID", "z", "record")}
  counts = {name: sum(getattr(c, name) for c in chunks)
            for name in ("n_records", "nonfinite_objects", "nonfinite_pixels", "out_of_bounds_objects",
                         "out_of_bounds_pixels", "duplicates_dropped")}
  return FileRecords(path=header.path, **joined, **counts)


class Tally:
  """Counts what streaming over files found; `as_dict()` is the JSON summary of a data set."""

  _COUNTS = ("n_records", "n_objects", "nonfinite_objects", "nonfinite_pixels", "out_of_bounds_objects",
             "out_of_bounds_pixels", "duplicates_dropped")

  def __init__(self, kind: str, nan_policy: str, skip_bad_files: bool, *,
               max_records_per_file: int = MAX_RECORDS_PER_FILE, pixel_bounds: Sequence[float] = PIXEL_BOUNDS,
               duplicates: str = "raise"):
    self.kind, self.nan_policy, self.skip_bad_files = check_kind(kind), check_nan_policy(nan_policy), skip_bad_files
    self.max_records_per_file = check_max_records(max_records_per_file)
    self.pixel_bounds, self.duplicates = check_pixel_bounds(pixel_bounds), check_duplicates(duplicates)
    self.n_files = 0
    for name in self._COUNTS:
      setattr(self, name, 0)
    self.classes = {name: 0 for name in CLASS_CODES}
    self.bad_files: list[BadFile] = []

  def add_chunk(self, item: FileRecords) -> None:
    """Counts records of a file without counting a file (a file may come in several chunks)."""
    self.n_records += item.n_records
    self.n_objects += len(item.labels)
    self.nonfinite_objects += item.nonfinite_objects
    self.nonfinite_pixels += item.nonfinite_pixels
    self.out_of_bounds_objects += item.out_of_bounds_objects
    self.out_of_bounds_pixels += item.out_of_bounds_pixels
    self.duplicates_dropped += item.duplicates_dropped
    if self.kind == "labelled":
      counts = np.bincount(item.labels, minlength=len(CLASS_CODES))
      for name, code in CLASS_CODES.items():
        self.classes[name] += int(counts[code])

  def add(self, item: FileRecords | BadFile) -> None:
    """Counts one whole file, good or bad."""
    self.n_files += 1
    if isinstance(item, BadFile):
      self.bad_files.append(item)
    else:
      self.add_chunk(item)

  def merge(self, other: "Tally") -> None:
    """Adds the counts of `other` (the chunks of one file, counted apart until the file proved good)."""
    self.n_files += other.n_files
    for name in self._COUNTS:
      setattr(self, name, getattr(self, name) + getattr(other, name))
    for name in CLASS_CODES:
      self.classes[name] += other.classes[name]
    self.bad_files += other.bad_files

  def as_dict(self) -> dict:
    action = {"zero": "{} pixels set to 0", "drop": "objects dropped", "raise": "error"}[self.nan_policy]
    summary = {
        "kind": self.kind,
        "n_files": self.n_files,
        "n_files_read": self.n_files - len(self.bad_files),
        "n_records": self.n_records,
        "n_objects": self.n_objects,
        "nonfinite": {"policy": self.nan_policy, "objects": self.nonfinite_objects,
                      "pixels": self.nonfinite_pixels, "action": action.format("non-finite")},
        "out_of_bounds": {"bounds": list(self.pixel_bounds), "policy": self.nan_policy,
                          "objects": self.out_of_bounds_objects, "pixels": self.out_of_bounds_pixels,
                          "action": action.format("out-of-bounds")},
        "max_records_per_file": self.max_records_per_file,
        "skip_bad_files": self.skip_bad_files,
        "n_bad_files": len(self.bad_files),
        "bad_files": [{"path": str(b.path), "reason": b.reason}
                      for b in sorted(self.bad_files, key=lambda b: str(b.path))],
    }
    if self.kind == "labelled":
      summary["duplicates"] = {"policy": self.duplicates, "objects_dropped": self.duplicates_dropped}
      summary["classes"] = dict(self.classes)
      summary["galaxy_fraction"] = self.classes["GALAXY"] / max(self.n_objects, 1)
    return summary


class Reader:
  """Streams study files through every check, chunk by chunk, keeping the tally and the objIDs seen.

  The one validation path of the data layer: `summarize` counts with it, the packer writes what it
  passes on. Per-file problems (bad header, bad record, bad pixels under 'raise') raise
  DataFormatError, or with `skip_bad_files` list the file as bad; a duplicate objID under
  duplicates='raise' always raises (DuplicateObjIDError)."""

  def __init__(self, kind: str, nan_policy: str = "zero", skip_bad_files: bool = False, *,
               max_records_per_file: int = MAX_RECORDS_PER_FILE, pixel_bounds: Sequence[float] = PIXEL_BOUNDS,
               duplicates: str = "raise"):
    self.options = dict(max_records_per_file=max_records_per_file, pixel_bounds=pixel_bounds, duplicates=duplicates)
    self.tally = Tally(kind, nan_policy, skip_bad_files, **self.options)
    self.kind, self.nan_policy, self.skip_bad_files = kind, nan_policy, skip_bad_files
    self._ids = ObjIDs(duplicates) if kind == "labelled" else None

  def _bad(self, path: Path, error: DataFormatError) -> None:
    if not self.skip_bad_files or isinstance(error, DuplicateObjIDError):
      raise error
    self.tally.add(BadFile(Path(path), str(error)))

  def record_count(self, path: Path) -> int:
    """Records the header of `path` declares (checked); 0 for a bad file listed under skip_bad_files."""
    try:
      return read_header(path, self.kind, self.tally.max_records_per_file).n_records
    except DataFormatError as e:
      self._bad(path, e)
      return 0

  def read_file(self, path: Path, write: Callable[[FileRecords], None] | None = None) -> bool:
    """Passes each checked chunk of one file's kept records to `write`, then counts the file.

    Returns False for a bad file listed under skip_bad_files: its counts and objIDs are not kept,
    and the caller must discard what `write` received from it (only a file of more than
    CHUNK_RECORDS records can fail after a chunk)."""
    part = Tally(self.kind, self.nan_policy, self.skip_bad_files, **self.options)
    try:
      header = read_header(path, self.kind, self.tally.max_records_per_file)
      for chunk in iter_file_chunks(header, self.kind, self.nan_policy, self.tally.pixel_bounds):
        if self._ids is not None:
          chunk = self._ids.filter(chunk)
        part.add_chunk(chunk)
        if write is not None:
          write(chunk)
    except DataFormatError as e:
      if self._ids is not None:
        self._ids.discard()
      self._bad(path, e)
      return False
    if self._ids is not None:
      self._ids.commit()
    part.n_files = 1
    self.tally.merge(part)
    return True


def summarize(paths: Sequence[Path], kind: str, nan_policy: str = "zero", skip_bad_files: bool = False, *,
              max_records_per_file: int = MAX_RECORDS_PER_FILE, pixel_bounds: Sequence[float] = PIXEL_BOUNDS,
              duplicates: str = "raise") -> dict:
  """Streams over the files (no packing) and returns the data set's JSON summary."""
  reader = Reader(kind, nan_policy, skip_bad_files, max_records_per_file=max_records_per_file,
                  pixel_bounds=pixel_bounds, duplicates=duplicates)
  for path in paths:
    reader.read_file(Path(path))
  return reader.tally.as_dict()


def resolve_paths(spec: PathSpec) -> list[Path]:
  """A directory (its *.npy, not recursive), a glob, a file, or a list of these -> sorted files."""
  specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
  found: set[Path] = set()
  for item in specs:
    path = Path(item).expanduser()
    if path.is_dir():
      found.update(p for p in path.glob("*.npy") if p.is_file())
    elif path.is_file():
      found.add(path)
    else:
      found.update(Path(p) for p in glob.glob(str(path)) if os.path.isfile(p))
  if not found:
    raise FileNotFoundError(f"no .npy files match {spec!r} (expected a directory, a glob or a list of files)")
  return sorted((Path(os.path.abspath(p)) for p in found), key=str)
