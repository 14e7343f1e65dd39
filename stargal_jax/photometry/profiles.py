"""Exponential and de Vaucouleurs profiles as mixtures of concentric Gaussians (Hogg & Lang 2013, PASP 125, 719),
and the analytic Sersic profiles they are fitted to and tested against."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import integrate, optimize, special


class GaussianMixture(NamedTuple):
  """Concentric 2-d Gaussians at the array centre: amplitudes (..., K) summing to the total flux, covariances
  (..., K, 2, 2) in px^2, (row, column) order. A leading object axis makes it per-object."""
  amplitudes: np.ndarray
  covariances: np.ndarray


class ProfileMixture(NamedTuple):
  """A circular unit-flux profile of unit effective radius as sum_k a_k N(0, v_k I)."""
  amplitudes: tuple
  variances: tuple


# Fitted by fit_sersic_mixture(1, 6, None, 10.0) and fit_sersic_mixture(4, 6, DEV_TRUNCATION, 8.0).
EXP_MIXTURE = ProfileMixture(
    amplitudes=(0.0022952054608287383, 0.024209292508212046, 0.12242184671671584, 0.33696785393132184,
                0.40278179180103924, 0.11132400958176131),
    variances=(0.00631372581907743, 0.04251455150726316, 0.16619635576569905, 0.5024920357815162,
               1.3039565459889735, 3.123322618425269))
DEV_TRUNCATION = (7.0, 8.0)  # SDSS: the deV profile is tapered to zero between 7 and 8 r_e
DEV_MIXTURE = ProfileMixture(
    amplitudes=(0.0038996908990068463, 0.030351016543243122, 0.1137907751115319, 0.23969725381513488,
                0.320552434623287, 0.29170882900842077),
    variances=(6.02177959194674e-05, 0.0012804845865103207, 0.015377496511169058, 0.13195717095146758,
               0.9435263192280259, 7.353313694788475))


def sersic_b(n: float) -> float:
  """b_n such that r_e holds half the light of exp(-b_n (r / r_e)^(1/n)): the root of P(2n, b) = 1/2."""
  return float(optimize.brentq(lambda b: special.gammainc(2 * n, b) - 0.5, 1e-3, 50.0))


def soft_truncation(r, r_in: float, r_out: float) -> np.ndarray:
  """1 inside r_in, (1 - x^2)^2 with x = (r - r_in) / (r_out - r_in) between, 0 beyond r_out (smooth to 0)."""
  x = np.clip((np.asarray(r, dtype=np.float64) - r_in) / (r_out - r_in), 0.0, 1.0)
  return (1.0 - x ** 2) ** 2


def sersic_profile(r, n: float, truncation: tuple | None = None) -> np.ndarray:
  """exp(-b_n ((r / r_e)^(1/n) - 1)) at radii r in units of r_e (1 at r_e), optionally soft-truncated."""
  r = np.asarray(r, dtype=np.float64)
  profile = np.exp(-sersic_b(n) * (r ** (1.0 / n) - 1.0))
  return profile * soft_truncation(r, *truncation) if truncation else profile


def sersic_enclosed(r, n: float, truncation: tuple | None = None) -> np.ndarray:
  """Flux within radii r (units of r_e) of `sersic_profile`, by quadrature (not normalised)."""
  def one(radius: float) -> float:
    breaks = [p for p in (0.01, 0.1, 1.0, 3.0, 7.0) if p < radius]
    return integrate.quad(lambda x: float(sersic_profile(x, n, truncation)) * 2 * np.pi * x, 0.0, radius,
                          points=breaks or None, limit=400)[0]
  return np.array([one(float(radius)) for radius in np.atleast_1d(r)])


def mixture_enclosed(mixture: ProfileMixture, r) -> np.ndarray:
  """Fraction of a ProfileMixture's flux within radii r (units of r_e)."""
  a, v = np.asarray(mixture.amplitudes), np.asarray(mixture.variances)
  r = np.atleast_1d(np.asarray(r, dtype=np.float64))
  return (a * (1.0 - np.exp(-r[:, None] ** 2 / (2 * v)))).sum(axis=1)


def mixture_profile(mixture: ProfileMixture, r) -> np.ndarray:
  """Surface brightness of a ProfileMixture at radii r (units of r_e), unit total flux."""
  a, v = np.asarray(mixture.amplitudes), np.asarray(mixture.variances)
  r = np.atleast_1d(np.asarray(r, dtype=np.float64))
  return (a / (2 * np.pi * v) * np.exp(-r[:, None] ** 2 / (2 * v))).sum(axis=1)


def fit_sersic_mixture(n: float, n_components: int, truncation: tuple | None, r_max: float,
                       n_starts: int = 6) -> ProfileMixture:
  """Least-squares mixture of `n_components` Gaussians for a Sersic profile of index n, out to r_max r_e.

  Residuals: the enclosed-flux fraction on a log grid of radii (what photometry needs) plus the surface
  brightness weighted by the annulus area (so the profile does not oscillate); amplitudes by a softmax
  (unit total flux), variances by their logs; the best of `n_starts` jittered starts.
  """
  total = float(sersic_enclosed(r_max + 1.0, n, truncation)[0])
  r = np.geomspace(1e-3, r_max, 400)
  enclosed = sersic_enclosed(r, n, truncation) / total
  profile = sersic_profile(r, n, truncation) / total
  area_weight = 2 * np.pi * np.sqrt(r * np.gradient(r))

  def unpack(p):
    return np.exp(p[:n_components] - np.logaddexp.reduce(p[:n_components])), np.exp(np.clip(p[n_components:], -30, 10))

  def residuals(p):
    mixture = ProfileMixture(*unpack(p))
    return np.concatenate([3.0 * (mixture_enclosed(mixture, r) - enclosed),
                           (mixture_profile(mixture, r) - profile) * area_weight])

  start = np.concatenate([np.zeros(n_components), np.log(np.geomspace(1e-4, r_max ** 2 / 8, n_components))])
  best = None
  for s in range(n_starts):
    jitter = np.random.default_rng(s).normal(0, 0.3, 2 * n_components) if s else 0.0
    solution = optimize.least_squares(residuals, start + jitter, method="lm", max_nfev=20000, xtol=1e-14,
                                      ftol=1e-14)
    if best is None or solution.cost < best.cost:
      best = solution
  amplitudes, variances = unpack(best.x)
  order = np.argsort(variances)
  return ProfileMixture(tuple(amplitudes[order].tolist()), tuple(variances[order].tolist()))
