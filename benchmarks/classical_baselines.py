"""AUCs of every classical label-free baseline, and label-free checks of the SDSS criterion on real frames.

Baselines (`morphology.classical_baseline_scores`, r band, larger = more extended): concentration,
psf_minus_extended (Gaussian matched filter vs 7.4" aperture), sdss_psf_minus_cmodel (PSF / deV / exp model
fits, `photometry`) and sdss_psf_minus_cmodel_significance (its S/N-aware version). Variants measured beside
them (not in the runs): g+r+i combinations of the two model criteria, the linear extension significance
(`photometry.extension_significance`), and the simulator's per-object truth PSF instead of the set's stacked
PSF (an oracle: how much one PSF per set costs). Also the fraction of stars and galaxies each cut calls
extended per r bin (psf-cModel > 0.145, significance > 3).

Data:
  (a) the project's default simulated set (5,000 labelled, seed 2017), labels from the labelled files' class;
  (b) a harder simulation: SimParams(faint_fraction=1.0, r_faint_limit=22.5, seeing_r_median_arcsec=1.4),
      3,000 labelled, seed 7, written to --hard-dir (generated when absent);
  (c) real SDSS frames (shared_data_dir()/sdss_frames; no labels): the fraction called extended per r bin,
      agreement with the concentration index by magnitude, and the stellar-locus width of psfMag - cModelMag.
Choices (r alone or g+r+i) are made on (a) and reported on (b) and (c).

  python benchmarks/classical_baselines.py [--out /tmp/classical_baselines] [--skip-real | --skip-sim] [--max-per-field 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from stargal_jax import PIXEL_SCALE_ARCSEC, default_data, morphology, paths, photometry
from stargal_jax.data import formats

R_BINS = ((-np.inf, 19.0, "r<19"), (19.0, 21.0, "19-21"), (21.0, np.inf, ">=21"))
HARD_PARAMS = dict(faint_fraction=1.0, r_faint_limit=22.5, seeing_r_median_arcsec=1.4)
GRI = (1, 2, 3)
EVALUATE_CHUNK = 2048  # evaluate.image_measurements measures in chunks of this size (one PSF per chunk)
SIGNIFICANCE_CUT = 3.0  # extension significance above which an object is called extended (3 sigma)


def load_labelled(root: Path) -> tuple[np.ndarray, np.ndarray, dict | None]:
  """(images (N, 5, 64, 64), is_galaxy (N,), truth columns in the same order or None)."""
  files = sorted((root / "labelled").glob("*.npy"))
  records = [formats.load_file(path, "labelled", nan_policy="zero") for path in files]
  images = np.concatenate([r.images for r in records])
  labels = np.concatenate([r.labels for r in records])
  truth_path = root / "truth" / "labelled_truth.npz"
  truth = None
  if truth_path.is_file():
    with np.load(truth_path, allow_pickle=False) as data:
      truth = {k: data[k] for k in ("objID", "psf_fwhm_arcsec", "label")}
    order = {int(o): i for i, o in enumerate(truth["objID"])}
    rows = np.array([order[int(o)] for r in records for o in r.objID])
    truth = {k: v[rows] for k, v in truth.items()}
  return images, formats.is_galaxy(labels), truth


def auc_table(is_galaxy: np.ndarray, r_mag: np.ndarray, scores: dict[str, np.ndarray]) -> dict:
  table = {}
  for name, score in scores.items():
    row = {"all": float(roc_auc_score(is_galaxy, score))}
    for lo, hi, label in R_BINS:
      sel = (r_mag >= lo) & (r_mag < hi)
      row[label] = float(roc_auc_score(is_galaxy[sel], score[sel])) if len(np.unique(is_galaxy[sel])) == 2 else None
    table[name] = row
  return table


def markdown_auc(table: dict, counts: dict) -> str:
  head = "| baseline | all | " + " | ".join(f"{label} (n={counts[label]})" for _, _, label in R_BINS) + " |"
  lines = [head, "|---" * (2 + len(R_BINS)) + "|"]
  for name, row in table.items():
    cells = [f"{row['all']:.3f}"] + [("-" if row[label] is None else f"{row[label]:.3f}") for _, _, label in R_BINS]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def chunked_baselines(images: np.ndarray) -> tuple[dict[str, np.ndarray], float, float]:
  """classical_baseline_scores as a run computes them (chunks of 2048), with wall and CPU seconds."""
  wall, cpu = time.perf_counter(), time.process_time()
  parts: dict[str, list] = {}
  for start in range(0, len(images), EVALUATE_CHUNK):
    for k, v in morphology.classical_baseline_scores(images[start:start + EVALUATE_CHUNK]).items():
      parts.setdefault(k, []).append(v)
  scores = {k: np.concatenate(v) for k, v in parts.items()}
  return scores, time.perf_counter() - wall, time.process_time() - cpu


def band_fits(images: np.ndarray, bands, psfs: dict | None = None) -> dict[int, photometry.ModelFits]:
  """Model fits per band with the set's own PSF per band (or the given per-band PSFs)."""
  out = {}
  for band in bands:
    if psfs:
      psf = psfs[band]
    else:
      try:
        psf = photometry.estimate_psf_model(images, band).mixture
      except ValueError as error:  # as morphology.sdss_model_criteria: a Gaussian of the locus width
        print(f"band {band}: {error}; Gaussian PSF", flush=True)
        psf = photometry.gaussian_psf_mixture(morphology.estimate_psf(images, band).fwhm_px)
    out[band] = photometry.fit_models(images, psf, band)
  return out


def significance(fits: photometry.ModelFits) -> np.ndarray:
  """psf_cmodel_significance with the set's own label-free stellar locus (as photometry.sdss_criteria)."""
  difference = photometry.psf_minus_cmodel(fits)
  with np.errstate(divide="ignore", invalid="ignore"):
    locus = photometry.stellar_locus(difference, fits.cmodel_flux / fits.psf_flux_err)
  return photometry.psf_cmodel_significance(fits, *locus)


def combined_criteria(fits: dict[int, photometry.ModelFits], bands) -> dict[str, np.ndarray]:
  """g+r+i: the criteria of the summed fluxes (a gri coadd's; errors added in quadrature)."""
  total = lambda field: sum(getattr(fits[b], field) for b in bands)
  combined = fits[bands[0]]._replace(psf_flux=total("psf_flux"), cmodel_flux=total("cmodel_flux"),
                                     psf_flux_err=np.sqrt(sum(fits[b].psf_flux_err ** 2 for b in bands)))
  return {"psf_minus_cmodel": photometry.psf_minus_cmodel(combined), "significance": significance(combined)}


def fill(values: np.ndarray) -> np.ndarray:
  values = np.array(values, np.float64)
  finite = np.isfinite(values)
  values[~finite] = np.median(values[finite]) if finite.any() else 0.0
  return values


def truth_psf_mixtures(fwhm_arcsec: np.ndarray) -> photometry.GaussianMixture:
  """Per-object mixtures of the simulator's PSF (Kolmogorov of the truth FWHM, pixel-convolved; the small
  truth shear is not recorded and is left out), fitted on a 0.01" grid of FWHMs."""
  import galsim
  grid = np.round(np.asarray(fwhm_arcsec, np.float64), 2)
  unique, inverse = np.unique(grid, return_inverse=True)
  stamps = np.array([galsim.Kolmogorov(fwhm=float(f)).drawImage(nx=64, ny=64, scale=PIXEL_SCALE_ARCSEC,
                                                                  offset=(0.5, 0.5)).array for f in unique])
  mixtures = photometry.psf_mixture_from_images(stamps)
  return photometry.GaussianMixture(mixtures.amplitudes[inverse], mixtures.covariances[inverse])


def simulated_study(name: str, root: Path) -> dict:
  images, is_galaxy, truth = load_labelled(root)
  r_mag = morphology.r_magnitude(images)
  counts = {label: int(((r_mag >= lo) & (r_mag < hi)).sum()) for lo, hi, label in R_BINS}
  print(f"\n## ({name}) {root}: {len(images)} labelled, {is_galaxy.mean():.2f} galaxies, per r bin {counts}",
        flush=True)
  scores, wall, cpu = chunked_baselines(images)
  print(f"classical_baseline_scores on {len(images)} cutouts (chunks of {EVALUATE_CHUNK}): {wall:.1f} s wall, "
        f"{cpu:.1f} s CPU ({wall / len(images) * 1000:.1f} s wall per 1,000)", flush=True)
  variants = dict(scores)
  fits = band_fits(images, GRI)
  gri = combined_criteria(fits, GRI)
  variants["sdss_psf_minus_cmodel (g+r+i)"] = fill(gri["psf_minus_cmodel"])
  variants["sdss_psf_minus_cmodel_significance (g+r+i)"] = fill(gri["significance"])
  variants["sdss_psf_minus_cmodel (r, one PSF for the whole set)"] = fill(photometry.psf_minus_cmodel(fits[2]))
  variants["linear extension significance (r)"] = fill(photometry.extension_significance(fits[2]))
  result = {"n": len(images), "counts": counts, "seconds_wall": wall, "seconds_cpu": cpu}
  if truth is not None:
    psf = truth_psf_mixtures(truth["psf_fwhm_arcsec"][:, 2])
    truth_fits = photometry.fit_models(images, psf, 2)
    variants["sdss_psf_minus_cmodel (r, truth PSF, oracle)"] = fill(photometry.psf_minus_cmodel(truth_fits))
    variants["sdss_psf_minus_cmodel_significance (r, truth PSF, oracle)"] = fill(significance(truth_fits))
    variants["linear extension significance (r, truth PSF, oracle)"] = fill(
        photometry.extension_significance(truth_fits))
  table = auc_table(is_galaxy, r_mag, variants)
  print(markdown_auc(table, counts), flush=True)
  difference = scores["sdss_psf_minus_cmodel"]
  stars = ~is_galaxy & (r_mag < 19)
  result["star_locus_width_r<19"] = float(stats.median_abs_deviation(difference[stars], scale="normal"))
  result["cut_0.145"] = {"star_called_extended": float((difference[~is_galaxy] > 0.145).mean()),
                         "galaxy_called_extended": float((difference[is_galaxy] > 0.145).mean())}
  print(f"stars r<19: psf-cModel locus width (1.4826 MAD) {result['star_locus_width_r<19']:.3f} mag; "
        f"cut 0.145: {result['cut_0.145']}", flush=True)
  calls = {}
  lines = ["| r bin | stars called extended: psf-cModel > 0.145 | significance > 3 | galaxies called extended: "
           "psf-cModel > 0.145 | significance > 3 |", "|---|---|---|---|---|"]
  for lo, hi, label in R_BINS:
    sel = (r_mag >= lo) & (r_mag < hi)
    dm_cut = scores["sdss_psf_minus_cmodel"] > photometry.SDSS_EXTENDED_CUT_MAG
    t_cut = scores["sdss_psf_minus_cmodel_significance"] > SIGNIFICANCE_CUT
    rates = [float(cut[sel & mask].mean()) if (sel & mask).any() else float("nan")
             for mask in (~is_galaxy, is_galaxy) for cut in (dm_cut, t_cut)]
    calls[label] = rates
    lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in rates) + " |")
  print("\n".join(lines), flush=True)
  result["calls"] = calls
  result["auc"] = table
  return result


def real_cutouts(max_per_field: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
  from stargal_jax import sdss_frames
  root = paths.shared_data_dir() / "sdss_frames"
  out = []
  for field_dir in sorted(p for p in root.iterdir() if p.is_dir()):
    start = time.perf_counter()
    field = sdss_frames.load_field(field_dir)
    sources = sdss_frames.detect_sources(field)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(sources))[:max_per_field])
    images, noise, _ = sdss_frames.cut_cutouts(field, np.c_[sources["x"][keep], sources["y"][keep]])
    out.append((field_dir.name, images, noise))
    print(f"{field_dir.name}: {len(sources)} sources, {len(keep)} cut ({time.perf_counter() - start:.0f} s)",
          flush=True)
  return out


def real_study(max_per_field: int, seed: int) -> dict:
  print("\n## (c) real SDSS frames", flush=True)
  fields = real_cutouts(max_per_field, seed)
  rows = []
  for name, images, noise in fields:
    r_mag = morphology.r_magnitude(images)
    model = photometry.estimate_psf_model(images, 2)  # per field: one seeing per field
    fits = photometry.fit_models(images, model.mixture, 2)
    fits_var = photometry.fit_models(images, model.mixture, 2, variance=np.square(noise[:, 2].astype(np.float64)))
    rows.append({"field": name, "r_mag": r_mag, "conc": -morphology.concentration_index(images),
                 "dm": photometry.psf_minus_cmodel(fits), "z": significance(fits),
                 "z_var": significance(fits_var), "fwhm": model.fwhm_px * PIXEL_SCALE_ARCSEC,
                 "n_stars": model.n_stars})
    print(f"{name}: PSF FWHM {model.fwhm_px * PIXEL_SCALE_ARCSEC:.2f}\" from {model.n_stars} stars", flush=True)
  pooled = np.concatenate([images for _, images, _ in fields])
  pooled_scores = morphology.classical_baseline_scores(pooled)  # what a run on the pooled set reports
  cat = lambda key: np.concatenate([row[key] for row in rows])
  r_mag, conc, dm, z, z_var = cat("r_mag"), cat("conc"), cat("dm"), cat("z"), cat("z_var")
  result = {"fields": {row["field"]: {"n": int(len(row["r_mag"])), "psf_fwhm_arcsec": row["fwhm"],
                                       "n_psf_stars": row["n_stars"]} for row in rows}}
  lines = ["| r bin | n | extended (psf-cModel > 0.145, per-field PSF) | extended (significance > 3) | "
           "extended (significance > 3, noise-map weights) | extended (psf-cModel > 0.145, pooled-set PSF) | "
           "Spearman(psf-cModel, concentration) | agreement with concentration's split |",
           "|---|---|---|---|---|---|---|---|"]
  bins = ((-np.inf, 18.0, "r<18"),) + ((18.0, 19.0, "18-19"),) + R_BINS[1:]
  pooled_dm = pooled_scores["sdss_psf_minus_cmodel"]
  result["bins"] = {}
  for lo, hi, label in bins:
    sel = (r_mag >= lo) & (r_mag < hi) & np.isfinite(dm) & np.isfinite(conc)
    if sel.sum() < 10:
      continue
    extended = dm[sel] > photometry.SDSS_EXTENDED_CUT_MAG
    # Concentration's own split at the same extended fraction: how often the two indices agree.
    threshold = np.quantile(conc[sel], 1 - extended.mean())
    agreement = float(((conc[sel] > threshold) == extended).mean())
    rho = float(stats.spearmanr(dm[sel], conc[sel]).statistic)
    row = {"n": int(sel.sum()), "extended_dm": float(extended.mean()),
           "extended_z": float((z[sel] > SIGNIFICANCE_CUT).mean()),
           "extended_z_var": float((z_var[sel] > SIGNIFICANCE_CUT).mean()),
           "extended_dm_pooled": float((pooled_dm[sel] > photometry.SDSS_EXTENDED_CUT_MAG).mean()),
           "spearman": rho, "agreement": agreement}
    result["bins"][label] = row
    lines.append(f"| {label} | {row['n']} | {row['extended_dm']:.2f} | {row['extended_z']:.2f} | "
                 f"{row['extended_z_var']:.2f} | {row['extended_dm_pooled']:.2f} | {rho:.2f} | {agreement:.2f} |")
  print("\n".join(lines), flush=True)
  # Stellar locus: bright objects the criterion calls point-like; its width, robust (SDSS: ~0.03 mag).
  bright = (r_mag < 19) & np.isfinite(dm)
  locus = bright & (np.abs(dm) < 0.145)
  result["locus"] = {"n_bright": int(bright.sum()), "n_locus": int(locus.sum()),
                     "median": float(np.median(dm[locus])),
                     "width_mad": float(stats.median_abs_deviation(dm[locus], scale="normal")),
                     "width_mad_pooled_psf": float(stats.median_abs_deviation(
                         pooled_dm[locus], scale="normal"))}
  per_field = {}
  offset = 0
  for row in rows:
    n = len(row["r_mag"])
    sel = locus[offset:offset + n]
    per_field[row["field"]] = float(stats.median_abs_deviation(dm[offset:offset + n][sel], scale="normal")) \
        if sel.sum() > 5 else None
    offset += n
  result["locus"]["width_mad_per_field"] = per_field
  print(f"stellar locus (r < 19, |psf-cModel| < 0.145): {result['locus']}", flush=True)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/classical_baselines")
  parser.add_argument("--hard-dir", default="/tmp/hard")
  parser.add_argument("--skip-real", action="store_true")
  parser.add_argument("--skip-sim", action="store_true", help="only the real frames (c)")
  parser.add_argument("--max-per-field", type=int, default=1500)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  results = {"machine": f"{os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d")}
  if not args.skip_sim:
    data = default_data.ensure_default_data(paths.cache_dir(""), n_labelled=5000, n_unlabelled=10000, seed=2017)
    results["default"] = simulated_study("a", data.root)
    hard = Path(args.hard_dir)
    if not (hard / "manifest.json").is_file():
      from stargal_jax.simulate import SimParams, simulate_dataset
      simulate_dataset(hard, 3000, 10, 7, workers=1, params=SimParams(**HARD_PARAMS))
    results["hard"] = simulated_study("b", hard)
  if not args.skip_real:
    results["real"] = real_study(args.max_per_field, args.seed)
  (out / "classical_baselines.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
  print(f"\nwrote {out / 'classical_baselines.json'}")


if __name__ == "__main__":
  main()
