"""Classification metrics for star-galaxy scores (host side, numpy / scikit-learn).

Conventions: galaxies are the positive class (`is_galaxy` True); stars and QSOs are point-like
(negative). A score is any continuous 1-D quantity; larger means "more galaxy-like" once it has
been oriented (`orient_score`). Everything here takes numpy arrays already fetched from device.

Three families of numbers, as in the study and as astronomers expect them:
- ranking: ROC AUC (label-free orientation) and max(AUC, 1 - AUC), the study's figure, which uses
  the labels to pick the galaxy end and is therefore NOT unsupervised;
- a hard classification at the prior threshold: the lowest `star_fraction` of the score is
  called point-like (the study's "prior knowledge" of ~30% stars);
- the Kim & Brunner (2017) operating points: galaxy purity at 96% galaxy completeness and star
  completeness at 97% star purity.
Multi-seed studies use `summarize_over_seeds` (Student-t interval) and `seed_agreement` (ARI).
"""

import math
import warnings
from itertools import combinations
from typing import Any, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics

DEFAULT_MAG_BINS = (19.0, 21.0)
GALAXY_COMPLETENESS_TARGET = 0.96
STAR_PURITY_TARGET = 0.97


def as_galaxy_mask(is_galaxy) -> np.ndarray:
  """(N,) bool from booleans or 0/1; class codes with QSO (2) or unlabelled (-1) are refused.

  `classes.astype(bool)` would call QSOs galaxies, so codes must be mapped by the caller
  (`classes == CLASS_CODES['GALAXY']`) after dropping unlabelled objects.
  """
  labels = np.asarray(is_galaxy).ravel()
  if labels.dtype != bool:
    unexpected = np.setdiff1d(np.unique(labels), [0, 1])
    if unexpected.size:
      raise ValueError(f"is_galaxy must be boolean or 0/1, got values {unexpected[:5].tolist()}: "
                       "pass classes == 1 (QSOs are point-like)")
  return labels.astype(bool)


def _as_labels_and_scores(is_galaxy, score) -> tuple[np.ndarray, np.ndarray]:
  """Validates one (labels, scores) pair; non-finite scores are a caller bug, not data."""
  labels = as_galaxy_mask(is_galaxy)
  scores = np.asarray(score, dtype=np.float64).ravel()
  if labels.shape != scores.shape:
    raise ValueError(f"is_galaxy has {labels.size} entries but score has {scores.size}")
  if not np.all(np.isfinite(scores)):
    raise ValueError(f"score has {np.count_nonzero(~np.isfinite(scores))} non-finite values")
  return labels, scores


def roc_auc(is_galaxy, score) -> float:
  """ROC AUC = P(score_galaxy > score_point) + 0.5 P(tie), from average ranks (Mann-Whitney U).

  Returns NaN when only one class is present (the AUC is undefined there).
  """
  labels, scores = _as_labels_and_scores(is_galaxy, score)
  n_pos = int(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return math.nan
  ranks = stats.rankdata(scores)  # average ranks: ties count one half
  u_statistic = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u_statistic / (n_pos * n_neg))


def roc_curve(is_galaxy, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(false positive rate, true positive rate, thresholds) from sklearn, galaxies positive."""
  labels, scores = _as_labels_and_scores(is_galaxy, score)
  return sk_metrics.roc_curve(labels, scores)


def prior_threshold(score, star_fraction: float) -> float:
  """The score at the `star_fraction` quantile: objects at or below it are called point-like.

  It is the k-th smallest score with k = round(star_fraction * N), so with distinct scores exactly
  k objects are point-like; tied scores all fall on the same side (the rule depends on values only).
  """
  scores = np.asarray(score, dtype=np.float64).ravel()
  if not 0.0 <= star_fraction <= 1.0:
    raise ValueError(f"star_fraction must lie in [0, 1], got {star_fraction}")
  n_point = int(round(star_fraction * scores.size))
  if n_point == 0:
    return -math.inf
  return float(np.sort(scores)[n_point - 1])


def prior_threshold_predictions(score, star_fraction: float) -> np.ndarray:
  """1 (galaxy) / 0 (point-like): the lowest `star_fraction` of the oriented score is point-like."""
  scores = np.asarray(score, dtype=np.float64).ravel()
  return (scores > prior_threshold(scores, star_fraction)).astype(np.int64)


def _cumulative_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(selected, true positives) for each cut "score >= t" over distinct t, strictest first."""
  order = np.argsort(-scores, kind="stable")
  sorted_scores, sorted_labels = scores[order], labels[order]
  true_positives = np.cumsum(sorted_labels)
  # Keep only the last position of each run of tied scores: a cut cannot split a tie.
  last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
  selected = np.arange(1, scores.size + 1)[last_of_tie]
  return selected, true_positives[last_of_tie]


def _galaxy_purity_at_completeness(labels, scores, completeness) -> tuple[float, str]:
  n_galaxy = int(labels.sum())
  if n_galaxy == 0:
    return math.nan, "no galaxies: galaxy completeness is undefined"
  selected, true_galaxies = _cumulative_counts(labels, scores)
  reached = true_galaxies / n_galaxy >= completeness - 1e-12
  # Completeness grows as the cut loosens, so the first cut reaching it is the strictest one.
  first = int(np.argmax(reached))
  return float(true_galaxies[first] / selected[first]), ""


def _star_completeness_at_purity(labels, scores, purity) -> tuple[float, str]:
  is_star = ~labels
  n_star = int(is_star.sum())
  if n_star == 0:
    return math.nan, "no point-like objects: star completeness is undefined"
  selected, true_stars = _cumulative_counts(is_star, -scores)  # stars are the low-score end
  star_purity = true_stars / selected
  feasible = star_purity >= purity - 1e-12
  if not feasible.any():
    return math.nan, (f"no cut reaches star purity {purity:.2f} "
                      f"(the best is {star_purity.max():.4f})")
  return float(true_stars[feasible].max() / n_star), ""


def galaxy_purity_at_completeness(is_galaxy, score,
                                  completeness: float = GALAXY_COMPLETENESS_TARGET) -> float:
  """Galaxy purity at the strictest cut "score >= t" whose galaxy completeness reaches `completeness`.

  Galaxy completeness = true galaxies selected / all true galaxies; galaxy purity = true galaxies
  selected / all objects selected (Kim & Brunner 2017). Cuts lie between distinct scores (ties are
  never split). NaN (with a warning saying why) when there are no galaxies.
  """
  labels, scores = _as_labels_and_scores(is_galaxy, score)
  value, reason = _galaxy_purity_at_completeness(labels, scores, completeness)
  if reason:
    warnings.warn(reason, stacklevel=2)
  return value


def star_completeness_at_purity(is_galaxy, score, purity: float = STAR_PURITY_TARGET) -> float:
  """The largest star completeness over cuts "score <= t" whose star purity is at least `purity`.

  Stars here are all point-like objects (STAR and QSO). Star completeness = true stars selected /
  all true stars; star purity = true stars selected / all objects selected (Kim & Brunner 2017).
  Purity is not monotone in the cut, hence the maximum over all cuts that qualify. NaN (with a
  warning giving the best purity reached) when no cut is pure enough.
  """
  labels, scores = _as_labels_and_scores(is_galaxy, score)
  value, reason = _star_completeness_at_purity(labels, scores, purity)
  if reason:
    warnings.warn(reason, stacklevel=2)
  return value


def _metrics_for_subset(labels, scores, predictions) -> dict[str, Any]:
  """The per-set numbers; `notes` says why any of them is NaN."""
  n_galaxy = int(labels.sum())
  notes = []
  if labels.size == 0:
    auc = math.nan
    notes.append("no objects")
  elif n_galaxy == 0 or n_galaxy == labels.size:
    auc = math.nan
    notes.append("one class only: AUC undefined")
  else:
    auc = roc_auc(labels, scores)
  purity, reason = _galaxy_purity_at_completeness(labels, scores, GALAXY_COMPLETENESS_TARGET)
  notes += [reason] if reason else []
  completeness, reason = _star_completeness_at_purity(labels, scores, STAR_PURITY_TARGET)
  notes += [reason] if reason else []
  return {
      "auc": auc,
      "auc_best_sign": max(auc, 1.0 - auc) if not math.isnan(auc) else math.nan,
      "accuracy": float(np.mean(predictions == labels)) if labels.size else math.nan,
      "galaxy_purity_at_96_completeness": purity,
      "star_completeness_at_97_purity": completeness,
      "n": int(labels.size),
      "n_galaxy": n_galaxy,
      "n_point": int(labels.size - n_galaxy),
      "notes": notes,
  }


def _bin_label(low: float, high: float) -> str:
  if math.isinf(low):
    return f"r<{high:g}"
  if math.isinf(high):
    return f"r>={low:g}"
  return f"{low:g}<=r<{high:g}"


def classification_metrics(is_galaxy, score, star_fraction: float, r_mag,
                           mag_bins: Sequence[float] = DEFAULT_MAG_BINS) -> dict[str, Any]:
  """All numbers for one oriented score, overall and per r-magnitude bin.

  The hard predictions come from ONE prior threshold on the whole set (the bins do not get their
  own priors), so the per-bin accuracy shows where that global cut fails. Objects whose r_mag is
  not finite are counted in `n_without_mag` and fall in no bin. Keys: auc, auc_best_sign,
  accuracy, galaxy_purity_at_96_completeness, star_completeness_at_97_purity, n, n_galaxy,
  n_point, notes, star_fraction, threshold, n_without_mag, by_mag (a list of the same per bin,
  each with mag_low, mag_high, label).
  """
  labels, scores = _as_labels_and_scores(is_galaxy, score)
  magnitudes = np.asarray(r_mag, dtype=np.float64).ravel()
  if magnitudes.shape != scores.shape:
    raise ValueError(f"r_mag has {magnitudes.size} entries but score has {scores.size}")
  edges = [-math.inf, *sorted(float(m) for m in mag_bins), math.inf]
  threshold = prior_threshold(scores, star_fraction)
  predictions = (scores > threshold).astype(bool)
  result = _metrics_for_subset(labels, scores, predictions)
  result.update(star_fraction=float(star_fraction), threshold=threshold,
                n_without_mag=int(np.count_nonzero(~np.isfinite(magnitudes))))
  by_mag = []
  for low, high in zip(edges[:-1], edges[1:]):
    in_bin = (magnitudes >= low) & (magnitudes < high)  # NaN compares False: in no bin
    entry = _metrics_for_subset(labels[in_bin], scores[in_bin], predictions[in_bin])
    entry.update(mag_low=low, mag_high=high, label=_bin_label(low, high))
    by_mag.append(entry)
  result["by_mag"] = by_mag
  return result


def to_json_safe(value: Any) -> Any:
  """Plain Python copy for json.dump: numpy scalars/arrays unwrapped, NaN and +-inf become None."""
  if isinstance(value, dict):
    return {str(k): to_json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return to_json_safe(value.tolist())
  if isinstance(value, np.generic):
    return to_json_safe(value.item())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def orient_score(score, extendedness) -> tuple[np.ndarray, int]:
  """(sign * score, sign) with sign in {+1, -1} chosen WITHOUT labels so that larger means galaxy.

  The sign is that of the Spearman rank correlation between the score and an extendedness
  measured on the images (e.g. `morphology.extendedness`, larger = more extended): galaxies are
  the extended objects, so the score end that goes with extended objects is the galaxy end.
  Objects with non-finite extendedness are left out of the correlation. A zero or undefined
  correlation keeps the score as it is (sign +1), with a warning.
  """
  scores = np.asarray(score, dtype=np.float64).ravel()
  extent = np.asarray(extendedness, dtype=np.float64).ravel()
  if scores.shape != extent.shape:
    raise ValueError(f"score has {scores.size} entries but extendedness has {extent.size}")
  usable = np.isfinite(scores) & np.isfinite(extent)
  varies = usable.sum() > 2 and np.ptp(scores[usable]) > 0 and np.ptp(extent[usable]) > 0
  rho = stats.spearmanr(scores[usable], extent[usable]).statistic if varies else math.nan
  if not np.isfinite(rho) or rho == 0:
    warnings.warn("score and extendedness are uncorrelated: keeping the score's sign", stacklevel=2)
    return scores, 1
  sign = 1 if rho > 0 else -1
  return sign * scores, sign


def summarize_over_seeds(values) -> dict[str, float]:
  """mean, std (ddof=1), min, max and a two-sided 95% Student-t interval for the mean over seeds.

  Non-finite values (failed runs) are left out and counted in `n_nonfinite`; `n` counts the rest.
  With fewer than two values std and the interval are NaN.
  """
  array = np.asarray(values, dtype=np.float64).ravel()
  finite = array[np.isfinite(array)]
  n = finite.size
  summary = {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan,
             "ci95_low": math.nan, "ci95_high": math.nan, "n": int(n),
             "n_nonfinite": int(array.size - n)}
  if n == 0:
    return summary
  mean = float(finite.mean())
  summary.update(mean=mean, min=float(finite.min()), max=float(finite.max()))
  if n >= 2:
    std = float(finite.std(ddof=1))
    half_width = float(stats.t.ppf(0.975, df=n - 1)) * std / math.sqrt(n)
    summary.update(std=std, ci95_low=mean - half_width, ci95_high=mean + half_width)
  return summary


def seed_agreement(labelings: Sequence) -> float:
  """Mean adjusted Rand index over all pairs of labelings (one per seed); 1 = identical partitions.

  ARI ignores how clusters are named, so a run whose labels are swapped still agrees fully.
  """
  arrays = [np.asarray(labels).ravel() for labels in labelings]
  if len(arrays) < 2:
    raise ValueError(f"seed_agreement needs at least two labelings, got {len(arrays)}")
  if len({a.size for a in arrays}) != 1:
    raise ValueError(f"labelings differ in length: {[a.size for a in arrays]}")
  return float(np.mean([sk_metrics.adjusted_rand_score(a, b) for a, b in combinations(arrays, 2)]))
