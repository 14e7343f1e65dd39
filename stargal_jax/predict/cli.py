"""`python -m stargal_jax.predict --run=DIR (--cutouts=DIR_OR_GLOB | --field=FIELD_DIR ...) --out=FILE`.

Classifies new data with a finished run (a classification run, a seed study, or a seg_cvae run, whose masked
classifier is used after its own segmentation has replaced the neighbours by noise) and writes the catalogue
(`stargal_jax.catalogue`; FITS by default). With `--field` it cuts the objects from the five SDSS frames
(`stargal_jax.sdss_frames`: SEP detections on r, or the positions of a CSV), segments them (the run's own
segmentation when it has one, else SEP on the whole r frame: `segment.field_maps`), classifies them and writes the
segmentation map on the r-band frame grid beside the catalogue. It sits above both wings, like `experiment`.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from stargal_jax import catalogue, registry

MAP_SUFFIX = "_segmap.fits"
DESCRIPTION = """\
Classify new data with a finished stargal_jax run and write a catalogue (FITS, ECSV or CSV).

The score is relative to the set scored: the score method, its label-free orientation (by the images'
extendedness) and the prior threshold (config.data.star_fraction) are fitted on the objects given here, as the
run did on its own labelled set. Score a whole field or sample at once, never objects one at a time; sets of
fewer than {minimum} objects are refused.

--cutouts: the study's .npy files (labelled or unlabelled; objID kept when present); a folder written by
`python -m stargal_jax.sdss_frames` also gives each object's field, ra, dec, x, y (from its cutouts.csv).
--field: the five frame-{{u,g,r,i,z}}-RRRRRR-C-FFFF.fits[.bz2] of one SDSS field: objects detected by SEP on r (or
at --positions), cut, segmented and classified in one go; the segmentation map (int32, r-frame grid and WCS,
0 = background, k = catalogue row id k) is written to --map (default: OUT without its suffix + {suffix}).
"""


class UserError(ValueError):
  """A mistake in the command's arguments or inputs: reported on one line, before any work where possible."""


class OneLineParser(argparse.ArgumentParser):
  """argparse whose errors are one line on stderr (not the usage block), exit status 2."""

  def error(self, message: str):
    self.exit(2, f"error: {' '.join(message.split())} (python -m stargal_jax.predict --help)\n")


def build_parser() -> argparse.ArgumentParser:
  from stargal_jax.classify.predict import MIN_OBJECTS
  from stargal_jax.sdss_frames import DETECT_SNR

  parser = OneLineParser(prog="python -m stargal_jax.predict",
                                   description=DESCRIPTION.format(minimum=MIN_OBJECTS, suffix=MAP_SUFFIX),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", required=True, help="a finished run's --workdir (launch.py)")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--cutouts", help="a folder or glob of the study's .npy cutout files")
  source.add_argument("--field", help="a folder with one SDSS field's five frame files")
  parser.add_argument("--positions", help="--field: CSV with ra,dec (deg) or x,y (r-band pixels, 0-based) and "
                      "optionally objID; default: SEP detections on r")
  parser.add_argument("--detect-snr", type=float, default=None,
                      help=f"--field without --positions: keep detections with r aperture S/N >= this "
                      f"(default {DETECT_SNR:g})")
  parser.add_argument("--max-objects", type=int, default=None,
                      help="--field detections: keep at most this many, highest S/N first")
  parser.add_argument("--keep-flagged", action="store_true",
                      help="--field: keep (and flag) saturated, truncated and edge detections and cutouts with "
                      "pixels outside a band's frame (default: left out)")
  parser.add_argument("--out", required=True, help="catalogue file to write")
  parser.add_argument("--format", choices=sorted(catalogue.FORMATS), default=None,
                      help="catalogue format (default: from --out's suffix, .ecsv / .csv, else fits)")
  parser.add_argument("--map", help=f"--field: segmentation map to write (default OUT stem + {MAP_SUFFIX})")
  parser.add_argument("--figure", help="--field: also write a PNG of the map's outlines on the r frame (galaxies "
                      "blue, point-like orange) with a zoom on its most crowded 300 x 220 px")
  parser.add_argument("--regions", help="also write a DS9 region file (fk5 circles: blue galaxies, orange "
                      "point-like, labelled with the catalogue id)")
  return parser


def _check_arguments(args, parser: argparse.ArgumentParser) -> None:
  """Argument mistakes, before any work."""
  if not args.field:
    for name in ("positions", "detect_snr", "max_objects", "map", "figure"):
      if getattr(args, name) not in (None, False):
        parser.error(f"--{name.replace('_', '-')} needs --field")
    if args.keep_flagged:
      parser.error("--keep-flagged needs --field")
  if args.positions and (args.detect_snr is not None or args.max_objects is not None):
    parser.error("--detect-snr and --max-objects apply to detections, not to --positions")
  if args.max_objects is not None and args.max_objects < 1:
    parser.error("--max-objects must be >= 1")
  run = Path(args.run)
  if not (run / "config.json").is_file():
    raise UserError(f"--run {run}: no config.json; not the --workdir of a finished stargal_jax run")
  if args.field and not Path(args.field).is_dir():
    raise UserError(f"--field {args.field}: not a folder")
  if args.positions and not Path(args.positions).is_file():
    raise UserError(f"--positions {args.positions}: no such file")


def classifier_of(run_dir: Path):
  """(the classification run to score with, its config, the fitted segmentation or None, whether neighbours are
  masked before classifying): a classification run itself, or a seg_cvae run's masked classifier."""
  import ml_collections

  from stargal_jax.classify import predict
  config = predict.load_config(run_dir)
  if config.pipeline == "segmentation":
    raise UserError(f"--run {run_dir} is a segmentation run: it has no classifier; give a classification run "
                    "or a seg_cvae run")
  if config.pipeline != "seg_cvae":
    return predict.load_run(run_dir), config, None, False
  from stargal_jax.segment import fitted_model
  fitted, _ = fitted_model.load_fitted_segmentation(run_dir)
  classifier = ml_collections.ConfigDict(config.to_dict())
  classifier.pipeline = config.seg.classifier_pipeline  # as the seg_cvae job classifies
  return predict.load_run(run_dir / "masked", config=classifier), config, fitted, True


def read_positions(path: str | Path) -> tuple[np.ndarray, str, np.ndarray | None]:
  """(N, 2) positions, 'sky' (ra, dec) or 'pixel' (x, y), and objID when the CSV has that column."""
  with open(path, newline="") as handle:
    reader = csv.DictReader(handle)
    rows = [{k.strip(): v for k, v in row.items() if k} for row in reader]
    columns = {c.strip() for c in reader.fieldnames or ()}
  keys = ("ra", "dec") if {"ra", "dec"} <= columns else ("x", "y") if {"x", "y"} <= columns else None
  if keys is None:
    raise UserError(f"--positions {path}: need columns ra,dec or x,y; found {sorted(columns)}")
  try:
    positions = np.array([[float(r[keys[0]]), float(r[keys[1]])] for r in rows], np.float64).reshape(-1, 2)
    objid = np.array([int(r["objID"]) for r in rows], np.int64) if "objID" in columns else None
  except (TypeError, ValueError) as error:
    raise UserError(f"--positions {path}: {error}") from None
  return positions, "sky" if keys[0] == "ra" else "pixel", objid


def cutout_paths(spec: str) -> tuple[list[Path], dict | None]:
  """The .npy files of --cutouts and, for a folder written by `sdss_frames` (with cutouts.csv), its provenance
  {(file name, record): row}; that folder's noise.npy is not a cutout file."""
  from stargal_jax.data import formats
  folder = Path(spec)
  provenance_csv = folder / "cutouts.csv"
  if folder.is_dir() and provenance_csv.is_file():
    with open(provenance_csv, newline="") as handle:
      rows = [row for row in csv.DictReader(handle) if row.get("file")]
    names = sorted({row["file"] for row in rows})
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
      raise UserError(f"--cutouts {folder}: cutouts.csv lists files that are not there, e.g. {missing[0]}")
    return [folder / n for n in names], {(row["file"], int(row["record"])): row for row in rows}
  return formats.resolve_paths(spec), None


def cutouts_kind(path: Path) -> str:
  """'labelled' or 'unlabelled', from the first file's fields."""
  from stargal_jax.data import formats
  try:
    formats.read_header(path, "labelled")
    return "labelled"
  except formats.DataFormatError as labelled_problem:
    try:
      formats.read_header(path, "unlabelled")
      return "unlabelled"
    except formats.DataFormatError:
      raise labelled_problem from None


def run_cards(run_dir: Path, config, classifier_config) -> list[tuple]:
  cards = []
  if classifier_config.pipeline != config.pipeline:
    cards.append(("CLASSIFR", f"{classifier_config.pipeline} in {run_dir / 'masked'}",
                  "classifier: the seg_cvae run's masked arm"))
  return cards


def predict_cutouts(args, run, config, fitted, masked) -> tuple:
  """Catalogue columns and header cards for --cutouts."""
  from stargal_jax import paths
  from stargal_jax.classify import predict
  from stargal_jax.data import store as stores

  files, provenance = cutout_paths(args.cutouts)
  kind = cutouts_kind(files[0])
  data = run.config.data
  store = stores.open_dataset(files, kind, cache_dir=paths.cache_dir(data.cache_dir), nan_policy=data.nan_policy,
                              skip_bad_files=data.skip_bad_files)
  predict.check_set_size(len(store), f"--cutouts {args.cutouts}")
  masks = neighbour_masks_of_store(store, fitted, config) if fitted is not None else None
  images = store
  if masked:
    from stargal_jax.segment import labelling
    images = labelling.mask_neighbours(store.read(np.arange(len(store))), masks, seed=int(config.seed) + 1,
                                       dilate=int(config.seg.mask_dilate))
  scored = predict.score_cutouts(run, images)
  columns = {"id": np.arange(1, len(store) + 1), "objID": np.asarray(store.index["objID"])}
  if provenance is not None:
    rows = [provenance[(Path(store.files[f]).name, int(r))] for f, r in zip(store.index["file"], store.index["record"])]
    columns.update(field=[row["field"] for row in rows],
                   **{k: [float(row[k]) for row in rows] for k in ("ra", "dec", "x", "y")})
  nonfinite = catalogue.nonfinite_pixels(store)
  columns.update(_scored_columns(scored, run.config), n_nonfinite=nonfinite, flag_nonfinite=nonfinite > 0)
  cards = [("DATATYPE", kind, "labelled (objID kept) or unlabelled .npy files")]
  if masks is None:  # no segmentation in the run: SEP on each cutout finds the neighbours
    from stargal_jax.segment import sep_baseline
    masks = sep_baseline.sep_segment(store.read(np.arange(len(store))))
    cards.append(("SEGMAP", "sep", "neighbours: SEP on each cutout's r band"))
  else:
    cards.append(("SEGMAP", "run", "neighbours: the run's own segmentation of each cutout"))
  columns.update(_neighbour_columns(_count_neighbours(masks)))
  return columns, cards, f"{len(files)} .npy files: {args.cutouts}"


def neighbour_masks_of_store(store, fitted, config) -> np.ndarray:
  """Masks of a store's cutouts by the run's segmentation, exactly as its job segmented its own sets."""
  from stargal_jax import inputs as inputs_lib
  from stargal_jax.segment import fitted_model, labelling
  k = int(config.seg.k)
  fetch = inputs_lib.model_images(store, fitted.normalizer)
  return fitted_model.segment_set({k: fitted.segmenters[k]}, fitted.hypercolumn_fn, fetch, len(store),
                                  int(config.seg.chunk), labelling.LabelOptions.from_config(config.seg))[k]


def _count_neighbours(masks: np.ndarray) -> np.ndarray:
  return np.array([len(np.unique(m[m >= 2])) for m in np.asarray(masks)], np.int16)


def _neighbour_columns(neighbours: np.ndarray) -> dict:
  return {"n_neighbours": neighbours, "flag_neighbours": neighbours > 0}


def _scored_columns(scored: dict, classifier_config) -> dict:
  from stargal_jax.classify import outputs
  return {**outputs.classification_columns(scored["score"], scored["pred"],
                                           float(classifier_config.data.star_fraction)),
          **outputs.measurement_columns(scored)}


def predict_field(args, run, config, fitted, masked) -> tuple:
  """Catalogue columns, header cards, data source, and the segmentation map for --field."""
  from stargal_jax import sdss_frames
  from stargal_jax.classify import predict
  from stargal_jax.segment import field_maps, labelling

  positions, coords, objid = read_positions(args.positions) if args.positions else (None, "pixel", None)
  field = sdss_frames.load_field(args.field)
  snr = sdss_frames.DETECT_SNR if args.detect_snr is None else float(args.detect_snr)
  objects = field_maps.field_objects(field, positions, coords, objid, detect_snr=snr, keep_flagged=args.keep_flagged,
                                     max_objects=args.max_objects)
  predict.check_set_size(len(objects), f"--field {args.field}")
  if fitted is not None:
    masks = field_maps.cutout_masks_of_run(objects.images, fitted, config.seg)
    seg_map, neighbours = field_maps.map_from_cutout_masks(field.reference.shape, masks, objects.x, objects.y)
    segmentation = ("run", "the run's own segmentation of each cutout")
  else:
    masks = None
    segments = field_maps.sep_frame_segments(field.reference)
    seg_map, neighbours = field_maps.map_from_sep(segments, objects.x, objects.y)
    segmentation = ("sep", "SEP on the whole r frame (detection settings)")
  images = objects.images
  if masked:
    images = labelling.mask_neighbours(images, masks, seed=int(config.seed) + 1, dilate=int(config.seg.mask_dilate))
  scored = predict.score_cutouts(run, images)
  columns = {"id": np.arange(1, len(objects) + 1), "objID": objects.objID, "field": [field.name] * len(objects),
             "ra": objects.ra, "dec": objects.dec, "x": objects.x, "y": objects.y, **_scored_columns(scored, run.config),
             "n_nonfinite": objects.n_nonfinite, **_neighbour_columns(neighbours),
             "flag_nonfinite": objects.n_nonfinite > 0, "flag_saturated": objects.saturated, "flag_edge": objects.edge}
  ref = field.reference
  cards = [("FIELD", field.name, "SDSS run-camcol-field"), ("RUN", ref.run, "SDSS run"),
           ("CAMCOL", ref.camcol, "SDSS camera column"), ("FIELDNUM", ref.field, "SDSS field number"),
           ("SOURCES", f"positions {args.positions}" if args.positions else f"SEP on r, S/N >= {snr:g}",
            "where the objects come from"),
           ("KEEPFLAG", bool(args.keep_flagged), "flagged objects kept (else left out)"),
           ("NDROPPED", objects.n_dropped, "cutouts with non-finite pixels left out"),
           ("SEGMAP", segmentation[0], segmentation[1]),
           ("SATCOUNT", float(sdss_frames.SATURATION_COUNTS), "raw counts: flag_saturated threshold")]
  offsets = ", ".join(f"{b} {dx:+.2f},{dy:+.2f}" for b, (dx, dy) in field.offsets.items())
  cards.append(("BANDOFFS", offsets, "band pixel offsets added to the WCS (x,y)"))
  return columns, cards, f"SDSS frames {Path(args.field).resolve()}", (seg_map, field)


def write_regions(path: str | Path, table) -> Path:
  """A DS9 region file: an fk5 circle of 3" at each object, blue for galaxies, orange for point-like ones."""
  lines = ["# Region file format: DS9 version 4.1 (stargal_jax.predict)", "global width=1 font=\"helvetica 8\"", "fk5"]
  for row in table:
    colour = "#1f77b4" if int(row["class"]) == 1 else "#ff7f0e"
    lines.append(f"circle({row['ra']:.7f},{row['dec']:.7f},3\") # color={colour} text={{{int(row['id'])}}}")
  Path(path).write_text("\n".join(lines) + "\n")
  return Path(path)


def crowded_window(x, y, shape: tuple[int, int], width: int = 300, height: int = 220) -> tuple[int, int, int, int]:
  """(x0, x1, y0, y1) of the `width` x `height` window of the frame holding the most objects (a 20 px grid)."""
  best, window = -1, (0, width, 0, height)
  for y0 in range(0, max(shape[0] - height, 0) + 1, 20):
    for x0 in range(0, max(shape[1] - width, 0) + 1, 20):
      count = int(np.sum((x >= x0) & (x < x0 + width) & (y >= y0) & (y < y0 + height)))
      if count > best:
        best, window = count, (x0, min(x0 + width, shape[1]), y0, min(y0 + height, shape[0]))
  return window


def write_figure(path: str | Path, seg_map: np.ndarray, field, table) -> Path:
  from stargal_jax import plots
  x, y = np.asarray(table["x"]), np.asarray(table["y"])
  reference = field.reference
  sky_sigma = float(np.nanmedian(reference.noise))
  galaxies = int(np.sum(table["class"] == 1))
  title = (f"{field.name}: {len(table)} objects, {galaxies} galaxies (blue), {len(table) - galaxies} point-like "
           f"(orange); segmentation {table.meta['SEGMAP']}")
  return plots.plot_segmentation_overlay(reference.image, seg_map, np.asarray(table["class"]) == 1, x, y, path,
                                         sky_sigma, zoom=crowded_window(x, y, reference.shape), title=title)


def run_command(args) -> int:
  from stargal_jax.segment import field_maps

  t0 = time.perf_counter()
  run_dir = Path(args.run)
  fmt = catalogue.format_of(args.out, args.format)
  run, config, fitted, masked = classifier_of(run_dir)
  if args.field:
    columns, cards, source, (seg_map, field) = predict_field(args, run, config, fitted, masked)
  else:
    columns, cards, source = predict_cutouts(args, run, config, fitted, masked)
  columns["flags"] = catalogue.flag_mask(columns)
  n = len(columns["id"])
  header = catalogue.header_cards(run_dir, config, source, n, extra=run_cards(run_dir, config, run.config) + cards)
  table = catalogue.make_table(columns, header)
  out = catalogue.write_catalogue(table, args.out, fmt)
  written = [str(out)]
  if args.field:
    map_path = Path(args.map) if args.map else out.with_name(out.stem + MAP_SUFFIX)
    field_maps.write_segmentation_map(map_path, seg_map, field,
                                      header + [("CATALOG", out.name, "the catalogue whose id column these are")])
    written.append(str(map_path))
    if args.figure:
      written.append(str(write_figure(args.figure, seg_map, field, table)))
  if args.regions:
    if "ra" not in table.colnames:
      raise UserError("--regions needs sky positions: --field, or --cutouts written by sdss_frames")
    written.append(str(write_regions(args.regions, table)))
  galaxies = int(np.sum(table["class"] == 1))
  print(f"{n} objects: {galaxies} galaxies, {n - galaxies} point-like (prior star_fraction "
        f"{float(run.config.data.star_fraction):g}) -> {', '.join(written)} ({time.perf_counter() - t0:.0f} s)")
  return 0


def one_line(error: BaseException) -> str:
  return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
  """The command; returns the exit status (2 with one line on stderr for a user's mistake)."""
  from stargal_jax import host_runtime
  host_runtime.configure()  # before jax computes anything: the run's own CPU settings (same numerics)
  parser = build_parser()
  args = parser.parse_args(argv)
  from stargal_jax.data import formats
  try:
    _check_arguments(args, parser)
    return run_command(args)
  except (UserError, registry.UnknownName, formats.DataFormatError, FileNotFoundError, ValueError, OSError) as error:
    print(f"error: {one_line(error)}", file=sys.stderr)
    return 2
