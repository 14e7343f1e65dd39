"""Real cutouts segmented by a finished `segmentation` run: SDSS frame cutouts and HSC scenes, beside SEP.

`python -m stargal_jax.segment.real_data WORKDIR [--out docs/images]` writes the README's figures.
"""

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from stargal_jax import paths
from stargal_jax.segment import faint, figures, fitted_model, labelling, pipeline, pixels, protocol, sep_baseline


HSC_BANDS = ("g", "r", "i", "z", "y")


HSC_TO_MODEL_BANDS = ("g", "g", "r", "i", "z")  # model channel u, g, r, i, z <- HSC band; HSC has no u; y unused


def sdss_field_cutouts(field_dir: str | Path, count: int, seed: int = 0, neighbour_radius: float = 30.0,
                       r_mag_range: tuple[float, float] = (16.0, 21.5)) -> tuple[np.ndarray, list[str]]:
  """`count` 64x64 ugriz cutouts (nanomaggies, the project's centre convention) of SEP-detected r sources
  in `r_mag_range` (5 px aperture) that have another detection within `neighbour_radius` pixels (to show
  neighbours), picked at random; titled 'field r=..'. Cutouts with NaN pixels are skipped."""
  from stargal_jax import sdss_frames  # astropy WCS work: imported only for real-data figures
  field = sdss_frames.load_field(field_dir)
  sources = sdss_frames.detect_sources(field)
  xy = np.stack([sources["x"], sources["y"]], axis=1)
  r_mag = 22.5 - 2.5 * np.log10(np.clip(sources["flux"], 1e-6, None))
  distance = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
  np.fill_diagonal(distance, np.inf)
  eligible = np.flatnonzero((r_mag >= r_mag_range[0]) & (r_mag < r_mag_range[1]) &
                            (distance.min(axis=1) < neighbour_radius))
  rng = np.random.default_rng([seed, 4])
  order = rng.permutation(eligible)
  images, noise, meta = sdss_frames.cut_cutouts(field, xy[order[:4 * count]])
  keep = np.flatnonzero(meta["n_nan"] == 0)[:count]
  titles = [f"{field.name} r={r_mag[order[k]]:.1f}" for k in keep]
  return images[keep], titles


def hsc_scene_cutout(path: str | Path, band_sigma: Sequence[float], size: int = 64,
                     seed: int = 0) -> np.ndarray:
  """One HSC scarlet scene (grizy, native 0.168"/px pixels) as a (5, size, size) model input.

  Channel mapping (`HSC_TO_MODEL_BANDS`): u <- g (HSC has no u band; g is the nearest), g, r, i, z <- the
  same HSC bands, y unused. Each band is background-subtracted (robust median) and scaled so that its
  sky noise (robust 1.4826 MAD) equals `band_sigma` (the training set's sky sigma of that channel, in
  nanomaggies): every band keeps its own S/N, and the noise is what the AE saw in training. Objects
  appear about 2.4x larger than at SDSS's 0.396"/px. The scene is centre-cropped / padded to
  `size` x `size`; padded pixels are noise of the same sigma.
  """
  with np.load(path, allow_pickle=False) as f:
    scene = np.asarray(f["images"], np.float64)
    # One of the scarlet files carries no filter list; all of them are HSC grizy in that order.
    filters = [str(b) for b in f["filters"]] if "filters" in f.files else list(HSC_BANDS)
  bands = np.stack([scene[filters.index(b)] for b in HSC_TO_MODEL_BANDS])
  level, sigma = pixels.robust_background(bands[None])
  scaled = (bands - level[0, :, None, None]) * (np.asarray(band_sigma) / sigma[0])[:, None, None]
  rng = np.random.default_rng([seed, 5])
  out = rng.standard_normal((5, size, size)) * np.asarray(band_sigma)[:, None, None]
  h, w = scaled.shape[1:]
  src_y, src_x = max((h - size) // 2, 0), max((w - size) // 2, 0)
  dst_y, dst_x = max((size - h) // 2, 0), max((size - w) // 2, 0)
  ch, cw = min(h, size), min(w, size)
  out[:, dst_y:dst_y + ch, dst_x:dst_x + cw] = scaled[:, src_y:src_y + ch, src_x:src_x + cw]
  return out.astype(np.float32)


def distinct_scenes(scene_paths: Sequence[Path]) -> list[Path]:
  """The scene files whose images differ from every earlier one (the scarlet set holds one scene twice)."""
  kept, seen = [], []
  for path in scene_paths:
    with np.load(path, allow_pickle=False) as f:
      images = np.asarray(f["images"])
    if not any(s.shape == images.shape and np.array_equal(s, images) for s in seen):
      kept.append(path)
      seen.append(images)
  return kept


def training_sky_sigma(normalizer: dict) -> np.ndarray:
  """Per-band sky sigma (nanomaggies) of the training images: the asinh normaliser's softening b is
  the 1.4826 MAD of the training pixels, i.e. the sky noise (nearly all pixels are sky)."""
  if normalizer.get("method") != "asinh":
    raise ValueError("the HSC noise matching needs the asinh normaliser's softening (method 'asinh')")
  return np.asarray(normalizer["softening"], np.float64)


def write_real_figures(workdir: str | Path, out_dir: str | Path, k: int | None = None, per_field: int = 4,
                       fields: Sequence[str] = ("001035-6-0017", "005405-6-0099"),
                       data_dir: str | Path | None = None) -> dict[str, Path]:
  """`segmentation_sdss.png` and `segmentation_hsc.png` in `out_dir`: real cutouts segmented by the
  finished run in `workdir` (its AE, k-means and object clusters, unchanged), beside SEP with the
  run's best-tuned detection band and threshold (gri, 1 sigma if the run had no truth to tune on)."""
  fitted, config = fitted_model.load_fitted_segmentation(workdir)
  k = int(config.seg.k if k is None else k)
  options = labelling.LabelOptions.from_config(config.seg)
  best = {"band": "gri", "thresh_sigma": 1.0}
  metrics_path = Path(workdir) / "metrics.json"
  if metrics_path.is_file():
    best.update(json.loads(metrics_path.read_text()).get("sep", {}).get("best", {}))
  data_dir = paths.shared_data_dir() if data_dir is None else Path(data_dir)
  out_dir = Path(out_dir)
  written = {}

  def figure(images, titles, name):
    ours = fitted_model.segment_real_cutouts(images, fitted, k, options)
    sep_masks = sep_baseline.sep_segment(images, best["band"], float(best["thresh_sigma"]),
                                         **sep_baseline.sep_kwargs(config.seg))
    columns = {f"ours (k={k})": ours, f"SEP ({best['band']}, {float(best['thresh_sigma']):g} sigma)": sep_masks}
    written[name] = figures.plot_segmentations(images, columns, out_dir / f"segmentation_{name}.png", titles,
                                       cutouts_as_columns=True, dpi=80)

  sdss = [sdss_field_cutouts(data_dir / "sdss_frames" / f, per_field) for f in fields]
  figure(np.concatenate([im for im, _ in sdss]), [t for _, ts in sdss for t in ts], "sdss")
  scenes = distinct_scenes(sorted((data_dir / "hsc_scarlet").glob("*.npz")))
  sigma = training_sky_sigma(fitted.normalizer)
  hsc = np.stack([hsc_scene_cutout(p, sigma) for p in scenes])
  figure(hsc, [p.stem.replace("hsc_", "HSC ") for p in scenes], "hsc")
  return written


FLOOD_COMPONENT_PX = 1024  # a quarter of a 64 x 64 cutout
FLOOD_OBJECT_FRACTION = 0.5
NO_FLOOD_RULE = (f"No-flood check: a cutout is flooded when one component holds more than {FLOOD_COMPONENT_PX} px "
                 f"(a quarter of the 64 x 64 cutout) or its object pixels exceed {FLOOD_OBJECT_FRACTION:.0%} of it.")
M2_CORE_R_PIXEL = (212.0, 923.0)  # (x, y) of M2's core on the r frame of 002583-2-0136 (shared/data README)


def flood_summary(masks: np.ndarray) -> dict:
  """Detections per cutout, object fraction, largest component and the flooded count of a mask set."""
  masks = np.asarray(masks)
  n = len(masks)
  largest = np.array([np.bincount(m[m > 0].ravel()).max() if (m > 0).any() else 0 for m in masks])
  fraction = (masks > 0).reshape(n, -1).mean(axis=1)
  flooded = (largest > FLOOD_COMPONENT_PX) | (fraction > FLOOD_OBJECT_FRACTION)
  return {"n": int(n), "detections_per_cutout": float(np.mean(masks.reshape(n, -1).max(axis=1))),
          "object_fraction_mean": float(fraction.mean()), "object_fraction_max": float(fraction.max()),
          "largest_component_px": int(largest.max()), "flooded": int(flooded.sum()),
          "central_found": float((masks == 1).any(axis=(1, 2)).mean())}


def grid_positions(centre: tuple[float, float], per_side: int, step: float) -> np.ndarray:
  """(per_side^2, 2) r-pixel (x, y) positions of a square grid of cutout centres around `centre`."""
  offsets = (np.arange(per_side) - (per_side - 1) / 2.0) * step
  xx, yy = np.meshgrid(centre[0] + offsets, centre[1] + offsets)
  return np.stack([xx.ravel(), yy.ravel()], axis=1)


def real_sets(data_dir: Path, count: int = 16, seed: int = 0) -> dict[str, tuple[np.ndarray, list[str]]]:
  """name -> (cutouts, titles): a high-latitude field (control), the crowded low-latitude field, a grid tiling
  M2's core, and the distinct HSC scenes are added by the caller (their noise matching needs the model)."""
  from stargal_jax import sdss_frames  # astropy WCS work: imported only for real-data figures
  sets = {"high-latitude 001035-6-0017": sdss_field_cutouts(data_dir / "sdss_frames" / "001035-6-0017", count, seed),
          "crowded 005405-6-0099": sdss_field_cutouts(data_dir / "sdss_frames" / "005405-6-0099", count, seed,
                                                      r_mag_range=(14.0, 22.0))}
  field = sdss_frames.load_field(data_dir / "sdss_frames" / "002583-2-0136")
  xy = grid_positions(M2_CORE_R_PIXEL, int(round(np.sqrt(count))), 64.0)
  images = sdss_frames.cut_cutouts(field, xy)[0]
  sets["M2 core 002583-2-0136"] = (np.nan_to_num(images), [f"M2 ({x:.0f}, {y:.0f})" for x, y in xy])
  return sets


def real_frame_checks(fitted_by_share: dict, k: int, options: labelling.LabelOptions,
                      deblending, baseline_settings: dict | None, out_dir: str | Path, count: int = 16,
                      data_dir: str | Path | None = None, n_figure: int = 6,
                      faint_options: faint.FaintOptions | None = faint.FaintOptions(),
                      edge_options=None) -> dict:
  """Real cutouts without truth, segmented by the pure and full methods (segmenters by detection share: the
  smallest is the pure one) and by SEP and photutils at `baseline_settings` (name -> grid row; the defaults'
  best): per set and method `flood_summary`, and one overlay figure per set in `out_dir`."""
  data_dir = paths.shared_data_dir() if data_dir is None else Path(data_dir)
  if not (data_dir / "sdss_frames").is_dir():
    return {"rule": NO_FLOOD_RULE, "rows": [], "figures": [], "skipped": f"no {data_dir / 'sdss_frames'}"}
  out_dir = Path(out_dir)
  sets = real_sets(data_dir, count)
  pure_share, share = min(fitted_by_share), max(fitted_by_share)
  scenes = distinct_scenes(sorted((data_dir / "hsc_scarlet").glob("*.npz")))
  if scenes:
    sigma = training_sky_sigma(fitted_by_share[share].normalizer)
    sets["HSC scenes"] = (np.stack([hsc_scene_cutout(p, sigma) for p in scenes]),
                          [p.stem.replace("hsc_", "HSC ") for p in scenes])
  settings = baseline_settings or {"SEP": {"band": "gri", "thresh_sigma": 1.0, "deblend_cont": 0.005},
                                   "photutils": {"nsigma": 2.0, "contrast": 0.001, "fwhm_px": 2.5}}
  rows, written = [], []
  for name, (images, titles) in sets.items():
    images = pixels.subtract_sky(np.asarray(images, np.float32))
    columns = {
      "pure (the study's)": pipeline.segment_images(fitted_by_share[pure_share], k, images, options)[0],
      "full": pipeline.segment_images(fitted_by_share[share], k, images, options,
                                      pipeline.Refinements(deblending, True, faint_options,
                                                                           edge_options=edge_options))[0]}
    snr = pixels.snr_image(images, "gri")
    for base in ("SEP", "photutils"):
      columns[base] = protocol.baseline_masks(base, images, settings[base], options, snr)
    for method, masks in columns.items():
      rows.append({"set": name, "method": method, **flood_summary(masks)})
    pick = np.arange(min(n_figure, len(images)))
    slug = name.split()[0].lower()
    path = figures.plot_segmentations(images[pick], {m: v[pick] for m, v in columns.items()},
                                      out_dir / f"segmentation_{slug}.png", [titles[i] for i in pick],
                                      cutouts_as_columns=True, dpi=80)
    written.append(f"{out_dir.name}/{path.name}")
  return {"rule": NO_FLOOD_RULE, "rows": rows, "figures": written}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m stargal_jax.segment.real_data",
    description="Segment real SDSS frame cutouts and HSC scenes with a finished segmentation run.")
  parser.add_argument("workdir", help="a finished `launch.py --config=configs/segmentation.py` run")
  parser.add_argument("--out", default=str(paths.REPO_ROOT / "docs" / "images"), help="figure folder")
  parser.add_argument("--k", type=int, default=None, help="which k of the run (default: its config.seg.k)")
  args = parser.parse_args(argv)
  for name, path in write_real_figures(args.workdir, args.out, args.k).items():
    print(f"{name}: {path} ({path.stat().st_size // 1024} KB)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
