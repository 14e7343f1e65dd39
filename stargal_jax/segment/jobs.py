"""The segmentation jobs, entries of the run registry (`experiment.RUNS`).

- `segmentation` (configs/segmentation.py): a plain and a residual conv AE are trained (MSE) on the
  unlabelled images, minus a held-back set on which their reconstruction MSE is compared. Hypercolumns
  (METHODS.md "Segmentation") of the chosen model's layers are clustered with k-means fitted on a
  random pixel sample of the unlabelled images; each cluster is object or background by its mean
  detection S/N on that sample (`pixel_kmeans.FOREGROUND_RULES`, no labels, no truth). Every labelled
  cutout is then segmented: `DIR/segmentation.npz` holds `objID` (N,) and `mask` (N, 64, 64) int16
  (0 background, 1 central object, 2, 3, ... neighbours by decreasing size). With simulator truth:
  scores against it (central IoU, object pixel IoU, neighbour completeness/purity by magnitude), the
  k sweep, and SEP tuned on the same cutouts. Writes `metrics.json`, `report.md`, `plots/`.
- `seg_cvae` (configs/seg_cvae.py): the same segmentation of both sets; the neighbours are replaced by
  noise (`labelling.mask_neighbours`) in copies of both stores (`DIR/masked_stores/`); the cvae
  classification (the classification wing's job) runs on the masked and on the original inputs; AUCs on all
  objects and on objects with neighbours.
"""

import dataclasses
import json
import time
from pathlib import Path
from typing import Mapping

import jax
import ml_collections
import numpy as np

from stargal_jax import inputs as inputs_lib
from stargal_jax import metrics
from stargal_jax.classify import job as classify_job
from stargal_jax.data import formats
from stargal_jax.data import normalize as normalization
from stargal_jax.data import store as stores
from stargal_jax.segment import figures, fitted_model, labelling, scoring, sep_baseline
from stargal_jax.segment import report as segment_report


def _load(config, workdir: Path):
  """Both jobs' start: the inputs, their normaliser saved beside the run, the unlabelled model inputs."""
  inputs = inputs_lib.load_inputs(config.data, seed=config.seed)
  normalization.save_normalizer(workdir / "normalizer.json", inputs.normalizer)
  return inputs, inputs_lib.model_images(inputs.unlabelled, inputs.normalizer)


def _write_metrics_and_report(workdir: Path, out: dict, report_lines, config) -> None:
  """metrics.json and report.md (`report_lines` of the JSON-safe metrics, then the config)."""
  safe = metrics.to_json_safe(out)
  (workdir / "metrics.json").write_text(json.dumps(safe, indent=2))
  (workdir / "report.md").write_text("\n".join(report_lines(safe) + ["## Config", "", "```",
                                                                     config.to_json_best_effort(indent=2), "```", ""]))


def run_segmentation(config, workdir: str | Path) -> dict:
  """The `segmentation` job: see the module docstring. Returns the metrics written to metrics.json."""
  t0 = time.perf_counter()
  workdir = Path(workdir)
  sc = config.seg
  inputs, fetch_u = _load(config, workdir)
  print(f"[segmentation] {inputs.source}: {len(inputs.unlabelled)} unlabelled, {len(inputs.labelled)} "
        f"labelled", flush=True)
  train_rows, held_rows = fitted_model.holdout_split(len(inputs.unlabelled), int(sc.holdout_images), config.seed)
  key = jax.random.key(config.seed)
  results, recon = {}, {}
  for j, name in enumerate(dict.fromkeys([*sc.compare_models, sc.model])):
    results[name] = fitted_model.train_autoencoder(sc, name, fetch_u, train_rows, jax.random.fold_in(key, j), workdir)
    if len(held_rows):
      recon[name] = dict(fitted_model.reconstruction_error(results[name], fetch_u, held_rows,
                                                           config.eval.eval_batch_size),
                         steps=int(sc.ae.train.steps))
      print(f"[segmentation] {name}: held-back MSE {recon[name]['mse']:.4f}", flush=True)
  reconstruction = {"models": recon}
  if "conv_ae" in recon and "residual_conv_ae" in recon:
    reconstruction["residual_over_plain_mse"] = recon["residual_conv_ae"]["mse"] / recon["conv_ae"]["mse"]

  ks = sorted({int(sc.k), *(int(k) for k in sc.ks)})
  fitted = fitted_model.fit_segmentation(results[sc.model], sc, inputs.normalizer, inputs.unlabelled, ks, config.seed)
  _progress(f"k-means fitted for k in {ks}", t0)
  options = labelling.LabelOptions.from_config(sc)
  fetch_l = inputs_lib.model_images(inputs.labelled, inputs.normalizer)
  masks_by_k = fitted_model.segment_set(fitted.segmenters, fitted.hypercolumn_fn, fetch_l, len(inputs.labelled),
                           int(sc.chunk), options)
  _progress(f"{len(inputs.labelled)} labelled cutouts segmented", t0)
  masks = masks_by_k[int(sc.k)]
  np.savez_compressed(workdir / "segmentation.npz", objID=np.asarray(inputs.labelled.index["objID"]), mask=masks)
  fitted_model.save_segmenter(workdir / "segmenter.npz", fitted)
  channels = int(fitted.segmenters[int(sc.k)].kmeans.centres.shape[1])
  out = {"pipeline": config.pipeline, "data_source": inputs.source, "reconstruction": reconstruction,
         "segmentation": {"model": sc.model, "hypercolumn_layers": list(fitted.layers),
                          "hypercolumn_channels": channels, "k": int(sc.k), "sample_pixels": int(sc.sample_pixels),
                          "fit_images": int(min(sc.fit_images or len(inputs.unlabelled), len(inputs.unlabelled))),
                          "rule": sc.rule, "snr_threshold": float(sc.snr_threshold), "snr_bands": sc.snr_bands,
                          "detection_share": float(sc.detection_share),
                          "detection_sigma_px": float(sc.detection_sigma_px),
                          "n_objects": int(len(masks)), "central_found_fraction": scoring.central_found_fraction(masks),
                          "cluster_snr": fitted.segmenters[int(sc.k)].cluster_snr.tolist(),
                          "cluster_is_object": fitted.segmenters[int(sc.k)].is_object.tolist()}}
  truth = inputs.truth
  n_score = len(masks) if not sc.score_images else min(int(sc.score_images), len(masks))
  columns: dict[str, np.ndarray | None] = {f"ours (k={sc.k})": masks}
  if truth is not None:
    truth = scoring.subset_truth(truth, n_score)
    images = inputs.labelled.read(np.arange(n_score))
    mag_bins = tuple(sc.mag_bins)
    best, grid = sep_baseline.tune_sep(images, truth["mask"], tuple(sc.sep_bands), tuple(sc.sep_thresholds),
                              scoring.truth_neighbour_table(truth), **sep_baseline.sep_kwargs(sc))
    sep_masks = sep_baseline.sep_segment(images, best["band"], best["thresh_sigma"],
                                         **sep_baseline.sep_kwargs(sc)).astype(labelling.MASK_DTYPE)
    _progress(f"SEP tuned over {len(grid)} settings: best {best['band']}, {best['thresh_sigma']:g} sigma", t0)
    out["scores"] = {f"ours (k={sc.k})": scoring.score_against_truth(masks[:n_score], truth, images, mag_bins),
                     f"SEP ({best['band']}, {best['thresh_sigma']:g} sigma)":
                       scoring.score_against_truth(sep_masks, truth, images, mag_bins)}
    out["sep"] = {"best": best, "grid": grid, "note": "tuned on the scored cutouts' truth: optimistic"}
    ours, sep_score = out["scores"].values()
    out["targets"] = {"central_iou_at_least_tuned_sep": bool(ours["central_iou"] >= sep_score["central_iou"])}
    columns = {f"ours (k={sc.k})": masks[:n_score], "truth": truth["mask"], "SEP (tuned)": sep_masks}
  if len(recon) == 2 and "residual_over_plain_mse" in reconstruction:
    out.setdefault("targets", {})["residual_reconstructs_better"] = bool(reconstruction["residual_over_plain_mse"] < 1)
  out["k_sweep"] = scoring.k_sweep_rows({k: m[:n_score] for k, m in masks_by_k.items()}, fitted.segmenters, truth)
  _progress("scored", t0)
  out["plots"] = figures.write_overlay_plots(workdir, inputs.labelled, columns, truth, int(sc.n_plot), config.seed)
  out["wall_seconds"] = time.perf_counter() - t0
  _write_metrics_and_report(workdir, out, segment_report.segmentation_report_lines, config)
  segment_report.print_summary(out, workdir)
  return out


def _progress(what: str, t0: float) -> None:
  print(f"[segmentation] {what} ({time.perf_counter() - t0:.0f}s)", flush=True)


def write_masked_store(store, masks: np.ndarray, directory: Path, seed: int, dilate: int = 2,
                       chunk: int = 512) -> stores.Store:
  """A packed store (images.npy, index.npy, files.json, summary.json) of `store`'s images with the
  neighbours of `masks` replaced by noise (`labelling.mask_neighbours`), written `chunk` images at
  a time through the file (sequential writes keep the resident set small). Reused when complete."""
  directory = Path(directory)
  if (directory / "summary.json").is_file():
    masked = stores.load_store(directory)
    if len(masked) == len(store):
      return masked
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "summary.json").unlink(missing_ok=True)  # written last: marks a complete store
  n = len(store)
  path = directory / "images.npy"
  header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n,) + formats.IMAGE_SHAPE)
  offset = header.offset
  del header
  replaced = 0
  with open(path, "r+b") as out:
    out.seek(offset)
    for start in range(0, n, chunk):
      idx = np.arange(start, min(start + chunk, n))
      masked = labelling.mask_neighbours(store.read(idx), masks[idx], seed=seed, dilate=dilate, index_offset=start)
      replaced += int(labelling.neighbour_region(masks[idx], dilate).sum())
      out.write(memoryview(np.ascontiguousarray(masked, dtype=np.float32)))
  np.save(directory / "index.npy", np.asarray(store.index), allow_pickle=False)
  (directory / "files.json").write_text(json.dumps(list(store.files)))
  summary = {"format_version": stores.FORMAT_VERSION, "n_objects": n, "masked_from": str(store.root),
             "neighbour_dilate": dilate, "seed": seed, "replaced_pixels_per_band": replaced,
             "cutouts_with_neighbours": int((masks >= 2).any(axis=(1, 2)).sum())}
  (directory / "summary.json").write_text(json.dumps(summary, indent=1))
  return stores.load_store(directory)


def subset_aucs(labels: np.ndarray, score: np.ndarray, subsets: Mapping[str, np.ndarray]) -> dict:
  """AUC (galaxies positive, the run's label-free orientation) and max(AUC, 1 - AUC) per subset. A seed
  study's score (S, N) gives each seed's AUC (`auc_per_seed`) and their mean (`auc`) and std."""
  is_galaxy = formats.is_galaxy(labels)
  scores = np.atleast_2d(np.asarray(score))
  out = {}
  for name, sel in subsets.items():
    sel = np.asarray(sel, bool)
    both = sel.sum() > 0 and 0 < is_galaxy[sel].sum() < sel.sum()
    per_seed = np.array([metrics.roc_auc(is_galaxy[sel], s[sel]) if both else np.nan for s in scores])
    out[name] = {"n": int(sel.sum()), "auc": float(np.mean(per_seed)),
                 "auc_best_sign": float(np.mean(np.maximum(per_seed, 1 - per_seed)))}
    if len(scores) > 1:
      out[name].update(auc_per_seed=per_seed.tolist(), auc_std=float(np.std(per_seed, ddof=1)))
  return out


def masking_gain(aucs: Mapping[str, Mapping]) -> dict:
  """What masking does, seed by seed (masked and unmasked runs share seed indices): the AUC change on
  objects with neighbours, on those without, and their difference, which removes whatever changed for
  every object (a different stage-1 AE, other training noise) and leaves the effect of the masking."""
  def change(subset):
    m, u = aucs["masked"][subset], aucs["unmasked"][subset]
    return np.asarray(m.get("auc_per_seed", [m["auc"]])) - np.asarray(u.get("auc_per_seed", [u["auc"]]))
  with_nb, without_nb = change("with_neighbours"), change("without_neighbours")
  out = {}
  for name, values in (("with_neighbours", with_nb), ("without_neighbours", without_nb),
                       ("with_minus_without", with_nb - without_nb)):
    out[name] = {"mean": float(np.mean(values))}
    if len(values) > 1:
      out[name].update(std=float(np.std(values, ddof=1)), per_seed=values.tolist(),
                       seeds_positive=int(np.sum(values > 0)))
  return out


def _classifier_config(config) -> ml_collections.ConfigDict:
  classifier = ml_collections.ConfigDict(config.to_dict())
  classifier.pipeline = config.seg.classifier_pipeline
  return classifier


def run_seg_cvae(config, workdir: str | Path) -> dict:
  """The `seg_cvae` job: see the module docstring. Returns the metrics written to metrics.json."""
  t0 = time.perf_counter()
  workdir = Path(workdir)
  sc = config.seg
  inputs, fetch_u = _load(config, workdir)
  all_rows = np.arange(len(inputs.unlabelled))
  key = jax.random.fold_in(jax.random.key(config.seed), 1000)
  result = fitted_model.train_autoencoder(sc, sc.model, fetch_u, all_rows, key, workdir)
  k = int(sc.k)
  # With data.train_on_labelled_images the training set joins both stores; the segmentation and the masked
  # copies are made per store, and the masked training set is joined again the same way.
  joined = isinstance(inputs.unlabelled, inputs_lib.TrainingImages)
  unlabelled_store = inputs.unlabelled.parts[0] if joined else inputs.unlabelled
  fitted = fitted_model.fit_segmentation(result, sc, inputs.normalizer, unlabelled_store, [k], config.seed)
  fitted_model.save_segmenter(workdir / "segmenter.npz", fitted)
  options = labelling.LabelOptions.from_config(sc)
  masks = {}
  for name, store in (("unlabelled", unlabelled_store), ("labelled", inputs.labelled)):
    fetch = inputs_lib.model_images(store, inputs.normalizer)
    masks[name] = fitted_model.segment_set(fitted.segmenters, fitted.hypercolumn_fn, fetch, len(store),
                                           int(sc.chunk), options)[k]
    _progress(f"{len(store)} {name} cutouts segmented", t0)
  np.savez_compressed(workdir / "segmentation.npz", objID=np.asarray(inputs.labelled.index["objID"]),
                      mask=masks["labelled"])
  np.savez_compressed(workdir / "segmentation_unlabelled.npz", mask=masks["unlabelled"])
  masked_dir = workdir / "masked_stores"
  masked_unlabelled = write_masked_store(unlabelled_store, masks["unlabelled"], masked_dir / "unlabelled",
                                         config.seed, int(sc.mask_dilate))
  masked_labelled = write_masked_store(inputs.labelled, masks["labelled"], masked_dir / "labelled",
                                       config.seed + 1, int(sc.mask_dilate))
  masked_inputs = dataclasses.replace(
      inputs, source=f"{inputs.source}, neighbours masked", labelled=masked_labelled,
      unlabelled=inputs_lib.TrainingImages((masked_unlabelled, masked_labelled)) if joined else masked_unlabelled)
  _progress("masked stores written", t0)
  classifier = _classifier_config(config)
  # Each run's metrics and its label-free scores (S, N), as its predictions.npz stores them.
  runs = {"masked": classify_job.classify(classifier, masked_inputs, workdir / "masked"),
          "unmasked": classify_job.classify(classifier, inputs, workdir / "unmasked")}
  predicted_nb = (masks["labelled"] >= 2).any(axis=(1, 2))
  subsets = {"all": np.ones(len(inputs.labelled), bool), "with_predicted_neighbours": predicted_nb,
             "without_predicted_neighbours": ~predicted_nb}
  if inputs.truth is not None:
    true_nb = np.asarray(inputs.truth["n_neighbours"]) > 0
    subsets.update(with_neighbours=true_nb, without_neighbours=~true_nb)
  else:
    # No truth: the segmentation's neighbours stand in.
    subsets.update(with_neighbours=predicted_nb, without_neighbours=~predicted_nb)
  labels = np.asarray(inputs.labelled.index["label"])
  aucs = {name: subset_aucs(labels, run["score"], subsets) for name, run in runs.items()}
  gain = aucs["masked"]["with_neighbours"]["auc"] - aucs["unmasked"]["with_neighbours"]["auc"]
  gains = masking_gain(aucs)
  out = {"pipeline": config.pipeline, "classifier_pipeline": sc.classifier_pipeline, "data_source": inputs.source,
         "neighbours_from": "truth n_neighbours > 0" if inputs.truth is not None else "segmentation",
         "auc_masked": runs["masked"]["metrics"]["auc"], "auc_unmasked": runs["unmasked"]["metrics"]["auc"],
         "auc_with_neighbours_masked": aucs["masked"]["with_neighbours"]["auc"],
         "auc_with_neighbours_unmasked": aucs["unmasked"]["with_neighbours"]["auc"],
         "auc_gain_with_neighbours": gain, "gain": gains, "num_seeds": int(config.num_seeds), "subsets": aucs,
         "segmentation": {"model": sc.model, "k": k, "hypercolumn_layers": list(fitted.layers),
                          "central_found_fraction": scoring.central_found_fraction(masks["labelled"]),
                          "labelled_with_predicted_neighbours": int(predicted_nb.sum()),
                          "unlabelled_with_predicted_neighbours":
                            int((masks["unlabelled"] >= 2).any(axis=(1, 2)).sum())},
         "targets": {"masking_raises_auc_with_neighbours": bool(gain > 0),
                     "raises_it_more_than_for_objects_without": bool(gains["with_minus_without"]["mean"] > 0)},
         "wall_seconds": time.perf_counter() - t0}
  if inputs.truth is not None:
    out["segmentation"]["scores"] = scoring.score_against_truth(masks["labelled"], inputs.truth,
                                                        inputs.labelled.read(np.arange(len(inputs.labelled))),
                                                        tuple(sc.mag_bins))
  picked = figures.pick_examples(inputs.truth, masks["labelled"], int(sc.n_plot), config.seed)
  if len(picked):
    figures.plot_segmentations(inputs.labelled.read(picked), {"ours": masks["labelled"][picked]},
                       workdir / "plots" / "segmentation_examples.png")
    figures.plot_masked_examples(inputs.labelled.read(picked), masked_inputs.labelled.read(picked),
                         masks["labelled"][picked], workdir / "plots" / "masked_examples.png")
  _write_metrics_and_report(workdir, out, segment_report.seg_cvae_report_lines, config)
  print(f"[result] AUC masked {out['auc_masked']:.4f} unmasked {out['auc_unmasked']:.4f} | with neighbours "
        f"masked {out['auc_with_neighbours_masked']:.4f} unmasked {out['auc_with_neighbours_unmasked']:.4f} "
        f"| gain with - without neighbours {gains['with_minus_without']['mean']:+.4f} "
        f"| {out['wall_seconds']:.0f}s | {workdir}", flush=True)
  return out
