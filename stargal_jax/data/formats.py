"""The study's `.npy` formats: labelled (objID, image, class, z) and unlabelled (image) records.

Reading is strict and safe. The `.npy` header is parsed and checked (magic, dtype, fields, image
shape, file size) before any data is read, and the data is then read as raw bytes into an array
of the validated dtype, so nothing is ever unpickled. A bad file raises `DataFormatError` naming
the file, the record (where one is to blame) and the problem. `load_file` is the single validation
path: the packed store and the `summarize` CLI both go through it.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from stargal_jax import registry

IMAGE_SHAPE = (5, 64, 64)
LABELLED_DTYPE = np.dtype([("objID", "<i8"), ("image", "<f4", IMAGE_SHAPE), ("class", "<U6"), ("z", "<f8")])
UNLABELLED_DTYPE = np.dtype([("image", "<f4", IMAGE_SHAPE)])
CLASS_CODES = {"STAR": 0, "GALAXY": 1, "QSO": 2}
UNLABELLED = -1
KINDS = ("labelled", "unlabelled")
NAN_POLICIES = ("zero", "drop", "raise")
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


def is_galaxy(labels: np.ndarray) -> np.ndarray:
  """Galaxies are the positive class; stars and QSOs (point-like) and unlabelled are not."""
  return np.asarray(labels) == CLASS_CODES["GALAXY"]


def check_kind(kind: str) -> str:
  return registry.check_choice(kind, KINDS, "data kind")


def check_nan_policy(nan_policy: str) -> str:
  return registry.check_choice(nan_policy, NAN_POLICIES, "nan_policy")


@dataclasses.dataclass(frozen=True)
class Header:
  """What a validated `.npy` header says: enough to count records and read the data raw."""
  path: Path
  dtype: np.dtype
  shape: tuple
  data_offset: int

  @property
  def n_records(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class FileRecords:
  """The valid objects of one file, with provenance and what the non-finite policy did."""
  path: Path
  images: np.ndarray  # float32 (n, 5, 64, 64), native byte order, all finite unless policy let through
  labels: np.ndarray  # int8 (n,): CLASS_CODES, or UNLABELLED
  objID: np.ndarray  # int64 (n,); -1 for unlabelled files (provenance is file + record)
  z: np.ndarray  # float32 (n,); NaN for unlabelled files
  record: np.ndarray  # int32 (n,): position of each object in its file
  n_records: int  # records in the file, before any were dropped
  nonfinite_objects: int  # records with at least one non-finite pixel
  nonfinite_pixels: int


@dataclasses.dataclass(frozen=True)
class BadFile:
  """A file refused while `skip_bad_files` is on: listed, never silently dropped."""
  path: Path
  reason: str


def _fail(path: Path, problem: str, record: int | None = None) -> DataFormatError:
  where = f"{path}" if record is None else f"{path}, record {record}"
  return DataFormatError(f"{where}: {problem}")


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


def read_header(path: str | os.PathLike, kind: str) -> Header:
  """Parses and validates a `.npy` header without reading the data (cheap: counts records)."""
  path, kind = Path(path), check_kind(kind)
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
  header = Header(path, dtype, tuple(shape), data_offset)
  expected = data_offset + header.n_records * dtype.itemsize
  size = path.stat().st_size
  if size != expected:
    state = "truncated" if size < expected else "has trailing bytes (corrupt)"
    raise _fail(path, f"file {state}: {size} bytes, header implies {expected} for {header.n_records} records")
  return header


def _read_raw(header: Header) -> np.ndarray:
  """Reads the validated data as raw bytes into a 1-D array of the header's dtype (no pickle)."""
  records = np.empty(header.n_records, dtype=header.dtype)
  with open(header.path, "rb") as f:
    f.seek(header.data_offset)
    n = f.readinto(memoryview(records.view(np.uint8)))
  if n != records.nbytes:  # the file shrank after the header check
    raise _fail(header.path, f"file truncated: read {n} of {records.nbytes} data bytes")
  return records


def _class_codes(path: Path, classes: np.ndarray) -> np.ndarray:
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
      first = int(np.flatnonzero(inverse == i)[0])
      shown = repr(bytes(value)) if isinstance(value, bytes) else repr(str(value))
      raise _fail(path, f"unknown class {shown}; valid classes: {', '.join(CLASS_CODES)}", first)
    codes[i] = code
  return codes[inverse.reshape(-1)]


def load_file(path: str | os.PathLike, kind: str, nan_policy: str = "zero") -> FileRecords:
  """Reads and validates one study file; applies the non-finite pixel policy to its records."""
  nan_policy = check_nan_policy(nan_policy)
  header = read_header(path, kind)
  path, records = header.path, _read_raw(header)
  n = len(records)
  images = np.ascontiguousarray(records["image"], dtype=np.float32)  # native byte order
  if kind == "labelled":
    labels = _class_codes(path, records["class"])
    objID = records["objID"].astype(np.int64)
    z = records["z"].astype(np.float32)
  else:
    labels = np.full(n, UNLABELLED, np.int8)
    objID = np.full(n, -1, np.int64)
    z = np.full(n, np.nan, np.float32)
  finite = np.isfinite(images)
  bad_pixels_per_record = (~finite).reshape(n, -1).sum(axis=1)
  bad_records = np.flatnonzero(bad_pixels_per_record)
  keep = np.ones(n, bool)
  if len(bad_records):
    if nan_policy == "raise":
      first = int(bad_records[0])
      raise _fail(path, f"{int(bad_pixels_per_record[first])} non-finite pixels (nan_policy='raise')", first)
    if nan_policy == "zero":
      images[~finite] = 0.0
    else:
      keep[bad_records] = False
  record = np.arange(n, dtype=np.int32)
  return FileRecords(
      path=path, images=images[keep], labels=labels[keep], objID=objID[keep], z=z[keep],
      record=record[keep], n_records=n, nonfinite_objects=len(bad_records),
      nonfinite_pixels=int(bad_pixels_per_record.sum()))


def iter_files(paths: Iterable[Path], kind: str, nan_policy: str = "zero",
               skip_bad_files: bool = False) -> Iterator[FileRecords | BadFile]:
  """Streams files one at a time; a bad file raises, or with `skip_bad_files` yields a BadFile."""
  for path in paths:
    try:
      yield load_file(path, kind, nan_policy)
    except DataFormatError as e:
      if not skip_bad_files:
        raise
      yield BadFile(Path(path), str(e))


class Tally:
  """Counts what streaming over files found; `as_dict()` is the JSON summary of a data set."""

  def __init__(self, kind: str, nan_policy: str, skip_bad_files: bool):
    self.kind, self.nan_policy, self.skip_bad_files = check_kind(kind), check_nan_policy(nan_policy), skip_bad_files
    self.n_files = self.n_records = self.n_objects = 0
    self.nonfinite_objects = self.nonfinite_pixels = 0
    self.classes = {name: 0 for name in CLASS_CODES}
    self.bad_files: list[BadFile] = []

  def add(self, item: FileRecords | BadFile) -> None:
    self.n_files += 1
    if isinstance(item, BadFile):
      self.bad_files.append(item)
      return
    self.n_records += item.n_records
    self.n_objects += len(item.labels)
    self.nonfinite_objects += item.nonfinite_objects
    self.nonfinite_pixels += item.nonfinite_pixels
    if self.kind == "labelled":
      counts = np.bincount(item.labels, minlength=len(CLASS_CODES))
      for name, code in CLASS_CODES.items():
        self.classes[name] += int(counts[code])

  def as_dict(self) -> dict:
    action = {"zero": "non-finite pixels set to 0", "drop": "objects dropped", "raise": "error"}[self.nan_policy]
    summary = {
        "kind": self.kind,
        "n_files": self.n_files,
        "n_files_read": self.n_files - len(self.bad_files),
        "n_records": self.n_records,
        "n_objects": self.n_objects,
        "nonfinite": {"policy": self.nan_policy, "objects": self.nonfinite_objects,
                      "pixels": self.nonfinite_pixels, "action": action},
        "skip_bad_files": self.skip_bad_files,
        "n_bad_files": len(self.bad_files),
        "bad_files": [{"path": str(b.path), "reason": b.reason} for b in self.bad_files],
    }
    if self.kind == "labelled":
      summary["classes"] = dict(self.classes)
      summary["galaxy_fraction"] = self.classes["GALAXY"] / max(self.n_objects, 1)
    return summary


def summarize(paths: Sequence[Path], kind: str, nan_policy: str = "zero", skip_bad_files: bool = False) -> dict:
  """Streams over the files (no packing) and returns the data set's JSON summary."""
  tally = Tally(kind, nan_policy, skip_bad_files)
  for item in iter_files(paths, kind, nan_policy, skip_bad_files):
    tally.add(item)
  return tally.as_dict()


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
