"""`python -m stargal_jax.sdss_frames --field DIR [--positions CSV | --detect-snr S] --out DIR`: cutouts of one
field in the study's .npy formats, a CSV of what was cut and a figure."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from stargal_jax import BANDS
from stargal_jax.data import formats
from stargal_jax.sdss_frames.cutouts import cut_cutouts, cutout_offsets, plot_cutouts
from stargal_jax.sdss_frames.field import detect_sources, load_field
from stargal_jax.sdss_frames.frames import APERTURE_RADIUS, DETECT_SNR, FrameError


LABEL_COLUMNS = ("objID", "class", "z")


def read_positions_csv(path: str | Path) -> tuple[np.ndarray, str, dict | None]:
  """(N, 2) positions, their kind ('sky' for ra,dec; 'pixel' for 0-based r-band x,y) and labels
  {objID, class, z} when all three columns are present (None when none are)."""
  with open(path, newline="") as handle:
    reader = csv.DictReader(handle)
    rows = list(reader)
    columns = {c.strip() for c in reader.fieldnames or ()}
  rows = [{k.strip(): v for k, v in row.items()} for row in rows]
  if {"ra", "dec"} <= columns:
    coords, keys = "sky", ("ra", "dec")
  elif {"x", "y"} <= columns:
    coords, keys = "pixel", ("x", "y")
  else:
    raise ValueError(f"{path}: need columns ra,dec or x,y; found {sorted(columns)}")
  positions = np.array([[float(row[keys[0]]), float(row[keys[1]])] for row in rows], np.float64).reshape(-1, 2)
  present = [c for c in LABEL_COLUMNS if c in columns]
  if not present:
    return positions, coords, None
  if len(present) != len(LABEL_COLUMNS):
    raise ValueError(f"{path}: labels need all of {', '.join(LABEL_COLUMNS)}; found only {present}")
  classes = [row["class"].strip().upper() for row in rows]
  unknown = sorted(set(classes) - set(formats.CLASS_CODES))
  if unknown:
    raise ValueError(f"{path}: unknown classes {unknown}; valid classes: {', '.join(formats.CLASS_CODES)}")
  labels = {"objID": np.array([int(row["objID"]) for row in rows], np.int64),
            "class": np.array(classes), "z": np.array([float(row["z"]) for row in rows], np.float64)}
  return positions, coords, labels


def _write_cutout_files(out: Path, stem: str, images: np.ndarray, labels: dict | None,
                        per_file: int) -> list[tuple[str, int]]:
  """Writes images (and labels) in the study's format, `per_file` records a file; returns (file, record) per image."""
  where = []
  for start in range(0, len(images), per_file):
    stop = min(start + per_file, len(images))
    name = f"{stem}_{start:06d}.npy"
    if labels is None:
      formats.write_unlabelled(out / name, images[start:stop])
    else:
      formats.write_labelled(out / name, labels["objID"][start:stop], images[start:stop],
                             labels["class"][start:stop], labels["z"][start:stop])
    where += [(name, k) for k in range(stop - start)]
  return where


def central_aperture_flux(images: np.ndarray, radius: float = APERTURE_RADIUS,
                          centre: float | None = None) -> np.ndarray:
  """Flux (nanomaggies) of (N, H, W) images in pixels whose centre is within `radius` of `centre`."""
  offsets = cutout_offsets(images.shape[-1], centre)
  inside = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2
  return np.nansum(np.where(inside, images, 0.0), axis=(-2, -1))


def _figure_selection(fluxes: np.ndarray, count: int) -> np.ndarray:
  """Indices spread evenly in brightness rank, so the figure shows bright and faint objects."""
  order = np.argsort(-fluxes)
  picks = np.linspace(0, len(order) - 1, min(count, len(order))).round().astype(int)
  return order[np.unique(picks)]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m stargal_jax.sdss_frames",
    description="Cut 5-band 64x64 cutouts (study .npy format) from one SDSS field's frame files.")
  parser.add_argument("--field", required=True, help="folder with frame-{u,g,r,i,z}-RRRRRR-C-FFFF.fits.bz2")
  parser.add_argument("--positions", help="CSV with ra,dec (deg) or x,y (r-band pixels, 0-based, first "
                      "pixel centre at 0,0); optional objID,class,z -> labelled files")
  parser.add_argument("--detect-snr", type=float, default=DETECT_SNR,
                      help="without --positions: detect on r and keep sources with aperture S/N >= this")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--per-file", type=int, default=1, help="records per .npy file (the study: 1 unlabelled)")
  parser.add_argument("--keep-partial", action="store_true",
                      help="also write cutouts with NaN pixels (parts outside a band's frame)")
  parser.add_argument("--no-refine", action="store_true", help="use the frames' WCS without measured band offsets")
  parser.add_argument("--centre", type=float, default=None,
                      help="array coordinate of the object on both axes (default 32: frame[y-32:y+32, x-32:x+32], "
                      "the project's convention; 31.5 = between the two middle pixels)")
  parser.add_argument("--figure", help="also write a gri figure of up to 16 of the cutouts to this path")
  args = parser.parse_args(argv)
  if args.per_file < 1:
    parser.error("--per-file must be >= 1")

  try:  # a bad frame, field or CSV: one line naming the file
    field = load_field(args.field, refine_alignment=not args.no_refine)
    labels = None
    if args.positions:
      positions, coords, labels = read_positions_csv(args.positions)
  except (FrameError, FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  flagged = {band: how for band, how in field.alignment.items() if how.startswith("WCS only")}
  if flagged and not args.no_refine:
    print(f"warning: {field.name}: bands aligned by their WCS alone (flagged in alignment.json): "
          + "; ".join(f"{band}: {how}" for band, how in flagged.items()), file=sys.stderr)
  if not args.positions:
    sources = detect_sources(field, snr=args.detect_snr)
    positions, coords = np.stack([sources["x"], sources["y"]], axis=1), "pixel"
  images, noise, meta = cut_cutouts(field, positions, coords=coords, centre=args.centre)
  complete = meta["n_nan"] == 0
  keep = np.ones(len(images), bool) if args.keep_partial else complete
  kept = np.flatnonzero(keep)

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  kept_labels = None if labels is None else {k: v[kept] for k, v in labels.items()}
  where = _write_cutout_files(out, field.name, images[kept], kept_labels, args.per_file)
  np.save(out / "noise.npy", noise[kept], allow_pickle=False)
  location = dict(zip(kept.tolist(), where))
  noise_row = {int(k): row for row, k in enumerate(kept)}
  with open(out / "cutouts.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["index", "field", "x", "y", "ra", "dec"] + (list(LABEL_COLUMNS) if labels else [])
                    + ["n_nan", "file", "record", "noise_row"])
    for k in range(len(images)):
      label_cells = [labels["objID"][k], labels["class"][k], labels["z"][k]] if labels else []
      file, record = location.get(k, ("", -1))
      writer.writerow([k, field.name, f"{meta['x'][k]:.4f}", f"{meta['y'][k]:.4f}", f"{meta['ra'][k]:.8f}",
                       f"{meta['dec'][k]:.8f}"] + label_cells + [int(meta["n_nan"][k]), file, record,
                                                               noise_row.get(k, -1)])
  with open(out / "alignment.json", "w") as handle:
    alignment = {"field": field.name, "offsets_band_pixels": field.offsets, "n_matched": field.n_matched,
                 "alignment": field.alignment, "wcs_only_bands": sorted(flagged)}
    json.dump(alignment, handle, indent=1)
  if args.figure and len(kept):
    fluxes = central_aperture_flux(images[kept][:, BANDS.index("r")], centre=args.centre)
    pick = _figure_selection(fluxes, 16)
    titles = [f"r_ap={22.5 - 2.5 * np.log10(f):.1f}" if f > 0 else "r_ap<0" for f in fluxes[pick]]
    plot_cutouts(images[kept][pick], args.figure, titles=titles)
  print(f"{field.name}: {len(images)} positions, {len(kept)} written to {out} "
        f"({int((~complete).sum())} partly outside a frame{'' if args.keep_partial else ', skipped'}); "
        f"band offsets (px) " + ", ".join(f"{b} {dx:+.2f},{dy:+.2f}" for b, (dx, dy) in field.offsets.items()))
  return 0
