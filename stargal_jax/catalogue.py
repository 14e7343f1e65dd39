"""Object catalogues as astropy tables: every column with its unit and description, a header recording the run,
written as FITS (default), ECSV or CSV.

`COLUMNS` is the one list of catalogue columns (name -> dtype, unit, description); `make_table` refuses a column
it does not describe, so every column a catalogue carries is documented here, and nowhere else. Per-seed columns
of a seed study are `score_sNNN` / `class_sNNN` (`seed_column`). Columns a source cannot give (sky positions of
simulated cutouts, say) are left out, never filled with made-up values.

FITS: one binary-table extension `CATALOGUE` with TUNITn (astropy units), TCOMMn (the column's description, the
HEASARC convention TOPCAT and fv display) and astropy's own column metadata, so `Table.read` gives back units,
descriptions and dtypes; the header holds the run's keywords (`header_cards`) and CHECKSUM/DATASUM. ECSV keeps
the same units, descriptions, dtypes and header (as table meta). CSV keeps the values only (spreadsheets).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.table import Column, Table

from stargal_jax import BANDS, __version__, registry

FORMATS = {"fits": "fits", "ecsv": "ascii.ecsv", "csv": "ascii.csv"}
EXTENSION_NAME = "CATALOGUE"
NOT_RECORDED = "not recorded"
RUN_IDENTITY_FILE = "run_identity.json"  # WORKDIR/run_identity.json, its "fingerprint": what determines the trained state
SEED_COLUMN = re.compile(r"^(score|class)_s(\d{3})$")
# Flag bits of the `flags` column (SExtractor-style bit mask), each also a boolean column of the same meaning.
FLAG_BITS = {"flag_nonfinite": 1, "flag_saturated": 2, "flag_neighbours": 4, "flag_edge": 8}


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
  dtype: str
  unit: Any
  description: str


_MAG_AP = ('7.4" (18.7 px) radius aperture magnitude in {band}, 22.5 - 2.5 log10(flux / nanomaggy) after '
           'subtracting the cutout\'s median at radius >= 24 px; 30 where the flux is not positive')
_NO_UNIT = u.dimensionless_unscaled

COLUMNS: dict[str, ColumnSpec] = {
    "id": ColumnSpec("i4", None, "row number, 1-based; in a field's segmentation map this object's pixels hold "
                                 "this value (0: background)"),
    "objID": ColumnSpec("i8", None, "object identifier from the input (labelled files, positions CSV); -1 when "
                                    "none was given"),
    "field": ColumnSpec("U16", None, "SDSS field (run-camcol-field) of the frames the object was cut from"),
    "ra": ColumnSpec("f8", u.deg, "right ascension (ICRS) of (x, y) through the r-band frame's WCS"),
    "dec": ColumnSpec("f8", u.deg, "declination (ICRS) of (x, y) through the r-band frame's WCS"),
    "x": ColumnSpec("f8", u.pix, "column on the r-band frame, 0-based: the centre of the first pixel is 0 "
                                 "(FITS / DS9 image pixel = x + 1); the cutout's centre"),
    "y": ColumnSpec("f8", u.pix, "row on the r-band frame, 0-based: the centre of the first pixel is 0 "
                                 "(FITS / DS9 image pixel = y + 1); the cutout's centre"),
    "r_mag": ColumnSpec("f4", u.mag, _MAG_AP.format(band="r") + " (the magnitude the run's score is made "
                                                                "uncorrelated with)"),
    **{f"mag_{b}": ColumnSpec("f4", u.mag, _MAG_AP.format(band=b)) for b in BANDS if b != "r"},
    "score": ColumnSpec("f4", _NO_UNIT, "label-free score, larger = more extended (galaxy-like); a seed study's is "
                                        "the consensus (mean over seeds of each seed's rank quantile). Relative "
                                        "to the set scored: its orientation and threshold were fitted on this set"),
    "score_quantile": ColumnSpec("f4", _NO_UNIT, "rank of score in this set / (N - 1): 0 the most point-like, 1 the "
                                                 "most extended"),
    "class": ColumnSpec("i2", None, "1 = galaxy (extended), 0 = point-like (star or QSO): score above / at or "
                                    "below its STARFRAC quantile in this set (the prior threshold)"),
    "concentration": ColumnSpec("f4", _NO_UNIT, "r-band concentration index F(r < 1.5 px) / F(r < 5 px) "
                                                "(0.6\" / 2\"): ~0.38 for a Gaussian PSF of sigma 1.5 px, smaller = "
                                                "more extended; NaN where F(5 px) <= 0"),
    "psf_minus_extended": ColumnSpec("f4", u.mag, "r-band Gaussian-PSF magnitude minus the 7.4\" aperture "
                                                  "magnitude, 0 on this set's stellar locus; larger = more "
                                                  "extended; NaN where a flux is not positive"),
    "psf_minus_cmodel": ColumnSpec("f4", u.mag, "SDSS's criterion psfMag - cModelMag in r from PSF, de Vaucouleurs "
                                                "and exponential model fits to the cutout (> 0.145: extended, as "
                                                "SDSS); NaN where undefined"),
    "psf_minus_cmodel_signif": ColumnSpec("f4", _NO_UNIT, "psf_minus_cmodel in units of its uncertainty (noise and "
                                                          "this set's stellar-locus width): ~N(0, 1) for point "
                                                          "sources at every S/N"),
    "n_nonfinite": ColumnSpec("i4", None, "pixels of the 5-band cutout that were NaN or infinite (outside a band's "
                                          "frame, masked); set to 0 before the model saw them"),
    "n_neighbours": ColumnSpec("i2", None, "other objects' segments inside the 64 x 64 cutout (SEGMAP header "
                                           "keyword: which segmentation)"),
    "flag_nonfinite": ColumnSpec("?", None, "n_nonfinite > 0 (flags bit 1)"),
    "flag_saturated": ColumnSpec("?", None, "a pixel at or above SATCOUNT raw counts within 5 px (2\") of (x, y) in "
                                            "any band (flags bit 2)"),
    "flag_neighbours": ColumnSpec("?", None, "n_neighbours > 0: another object inside the cutout (flags bit 4)"),
    "flag_edge": ColumnSpec("?", None, "the 64 x 64 cutout reaches beyond the r-band frame (flags bit 8)"),
    "flags": ColumnSpec("i2", None, "bit mask: 1 non-finite pixels, 2 saturated, 4 neighbours, 8 frame edge "
                                    "(the flag_* columns)"),
    "eval_label": ColumnSpec("U6", None, "EVALUATION LABEL: the input's spectroscopic class (STAR, GALAXY, QSO); "
                                         "used only for the run's metrics, never in training, scoring, orientation "
                                         "or threshold"),
    "eval_z": ColumnSpec("f4", _NO_UNIT, "EVALUATION LABEL: the input's redshift; used only for the run's metrics"),
}


def seed_column(kind: str, seed_index: int) -> str:
  """`score_sNNN` / `class_sNNN`: one seed's own score or class in a seed study's catalogue."""
  registry.check_choice(kind, ("score", "class"), "per-seed column kind")
  return f"{kind}_s{int(seed_index):03d}"


def column_spec(name: str) -> ColumnSpec:
  """The spec of a catalogue column (per-seed columns derived from `score` / `class`)."""
  match = SEED_COLUMN.match(name)
  if match:
    base = COLUMNS[match.group(1)]
    what = "score" if match.group(1) == "score" else "class at this seed's own prior threshold"
    return ColumnSpec(base.dtype, base.unit, f"seed {int(match.group(2))}'s own {what} (larger / 1 = galaxy), "
                                             "oriented and thresholded on this set")
  return registry.lookup(COLUMNS, name, "catalogue column")


def flag_mask(columns: Mapping[str, np.ndarray]) -> np.ndarray:
  """The `flags` bit mask from whichever flag_* columns are present."""
  n = len(next(iter(columns.values())))
  mask = np.zeros(n, np.int16)
  for name, bit in FLAG_BITS.items():
    if name in columns:
      mask |= np.where(np.asarray(columns[name], bool), bit, 0).astype(np.int16)
  return mask


def column_order(name: str) -> tuple[int, int]:
  """Where a column stands in every catalogue: `COLUMNS` order, a seed study's per-seed columns after `class`."""
  column_spec(name)  # an unknown name fails here
  match = SEED_COLUMN.match(name)
  if match:
    return list(COLUMNS).index("class"), 1 + 2 * int(match.group(2)) + (match.group(1) == "class")
  return list(COLUMNS).index(name), 0


def make_table(columns: Mapping[str, Any], header: Sequence[tuple[str, Any, str]] = ()) -> Table:
  """An astropy Table of `columns` (name -> (N,) values; ordered by `column_order`), each with the dtype, unit and
  description of its `COLUMNS` entry; `header` cards (keyword, value, comment) go to `table.meta`."""
  lengths = {name: len(values) for name, values in columns.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"catalogue columns differ in length: {lengths}")
  table = Table()
  for name in sorted(columns, key=column_order):
    values = columns[name]
    spec = column_spec(name)
    table[name] = Column(np.asarray(values).astype(spec.dtype), unit=spec.unit, description=spec.description)
  for keyword, value, _ in header:
    table.meta[keyword] = value
  table.meta["header_comments"] = {keyword: comment for keyword, _, comment in header}
  return table


def run_fingerprint(workdir: str | Path) -> str:
  """`fingerprint` of WORKDIR/run_identity.json (what determines the trained state), or 'not recorded'."""
  path = Path(workdir) / RUN_IDENTITY_FILE
  if not path.is_file():
    return NOT_RECORDED
  try:
    return str(json.loads(path.read_text())["fingerprint"])
  except (ValueError, KeyError, TypeError):
    return NOT_RECORDED


def run_config_name(workdir: str | Path) -> str:
  """The config file a run was launched with, when WORKDIR/run_identity.json records it ('config')."""
  path = Path(workdir) / RUN_IDENTITY_FILE
  try:
    return str(json.loads(path.read_text()).get("config") or NOT_RECORDED) if path.is_file() else NOT_RECORDED
  except (ValueError, AttributeError):
    return NOT_RECORDED


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def header_cards(workdir: str | Path, config, data_source: str, n_objects: int,
                 extra: Sequence[tuple[str, Any, str]] = ()) -> list[tuple[str, Any, str]]:
  """The header every catalogue carries: the run (path, pipeline, config, fingerprint, score method, seeds, the
  star_fraction prior), the package version, the date and the data source; then `extra` cards."""
  seeds = int(config.num_seeds)
  cards = [
      ("ORIGIN", "stargal_jax", "software that wrote this catalogue"),
      ("SWVERSN", __version__, "stargal_jax version"),
      ("DATE", utc_now(), "UTC date and time this file was written"),
      ("RUNDIR", str(Path(workdir).resolve()), "the trained run that classified these objects"),
      ("PIPELINE", str(config.pipeline), "the run's pipeline (config.pipeline)"),
      ("CONFIG", run_config_name(workdir), "the run's config file (run_identity.json)"),
      ("FINGERPR", run_fingerprint(workdir), "sha256 of what determines the trained state (run_identity.json)"),
      ("SCOREMTH", str(config.score.method), "label-free score method (config.score.method)"),
      ("NSEEDS", seeds, "seeds of the run; > 1: score is the consensus (mean rank)"),
      ("STARFRAC", float(config.data.star_fraction), "prior point-source fraction: the class threshold"),
      ("DATASRC", str(data_source), "the data classified"),
      ("NOBJ", int(n_objects), "objects in this catalogue (the set scored together)"),
      ("PIXORIG", 0, "x, y are 0-based: first pixel centre = 0 (FITS/DS9: +1)"),
  ]
  return cards + list(extra)


def check_format(fmt: str) -> str:
  return registry.check_choice(fmt, FORMATS, "catalogue format")


def format_of(path: str | Path, fmt: str | None = None) -> str:
  """`fmt`, else from the file name (.fits/.fit/.fts, .ecsv, .csv), else FITS."""
  if fmt:
    return check_format(fmt)
  suffix = Path(path).suffix.lower()
  return {".ecsv": "ecsv", ".csv": "csv"}.get(suffix, "fits")


def fitting_comment(keyword: str, value: Any, comment: str) -> str:
  """`comment` shortened until the card (keyword, value, comment) fits its 80 characters (FITS would truncate)."""
  for length in range(len(comment), -1, -1):
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always", fits.verify.VerifyWarning)
      fits.Card(keyword, value, comment[:length]).image
    if not caught:
      return comment[:length]
  return ""


def _fits_hdul(table: Table) -> fits.HDUList:
  """astropy's own FITS table (units, and its YAML column metadata: descriptions and dtypes come back on read),
  then the header comments, TCOMMn descriptions and the extension name."""
  comments = table.meta.get("header_comments", {})
  plain = table.copy(copy_data=False)
  plain.meta = {k: v for k, v in table.meta.items() if k != "header_comments"}
  buffer = io.BytesIO()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", fits.verify.VerifyWarning)  # long string values go as CONTINUE cards
    plain.write(buffer, format="fits")
    hdul = fits.open(io.BytesIO(buffer.getvalue()))
    header = hdul[1].header
    for keyword, comment in comments.items():
      if keyword in header:
        header.comments[keyword] = fitting_comment(keyword, header[keyword], comment)
    for number, name in enumerate(table.colnames, start=1):
      description = table[name].description or ""
      header.comments[f"TTYPE{number}"] = fitting_comment(f"TTYPE{number}", name, description)
      header.insert(f"TTYPE{number}", (f"TCOMM{number}", description), after=True)
  hdul[1].name = EXTENSION_NAME
  return hdul


def write_catalogue(table: Table, path: str | Path, fmt: str | None = None) -> Path:
  """Writes `table` as FITS (default), ECSV or CSV (`fmt`, else from the suffix); returns the path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fmt = format_of(path, fmt)
  if fmt == "fits":
    with _fits_hdul(table) as hdul:
      hdul.writeto(path, overwrite=True, checksum=True)
  elif fmt == "ecsv":
    table.write(path, format=FORMATS[fmt], overwrite=True)
  else:
    plain = table.copy(copy_data=False)
    plain.meta = {}
    plain.write(path, format=FORMATS[fmt], overwrite=True)
  return path


def read_catalogue(path: str | Path, fmt: str | None = None) -> Table:
  """A catalogue written by `write_catalogue` (FITS strings as str, NaN kept as NaN, not masked)."""
  fmt = format_of(path, fmt)
  if fmt == "fits":
    return Table.read(path, hdu=EXTENSION_NAME, character_as_bytes=False, mask_invalid=False)
  return Table.read(path, format=FORMATS[fmt])


def nonfinite_pixels(store) -> np.ndarray:
  """(N,) non-finite pixels of each object of a packed store as its input file holds them (the store itself
  has them set to 0 or dropped by the nan_policy), read from the files the store lists (no pickle)."""
  counts = np.zeros(len(store), np.int32)
  file_numbers = np.asarray(store.index["file"])
  records = np.asarray(store.index["record"])
  for number in np.unique(file_numbers):
    rows = np.flatnonzero(file_numbers == number)
    data = np.load(store.files[int(number)], mmap_mode="r", allow_pickle=False)
    images = np.atleast_1d(data)["image"]
    counts[rows] = [np.count_nonzero(~np.isfinite(images[int(r)])) for r in records[rows]]
  return counts
