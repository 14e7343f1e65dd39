"""The star-galaxy criteria built from the fits: SDSS's psfMag - cModelMag and its S/N-aware significance."""

from __future__ import annotations

import math

import numpy as np

from stargal_jax.photometry.fitting import (MAD_TO_SIGMA, R_BAND, ModelFits, extension_significance,
                                            fit_models, psf_minus_cmodel)
from stargal_jax.photometry.profiles import GaussianMixture
from stargal_jax.photometry.psf import estimate_psf_model, narrowest_mode

# Null of psfMag - cModelMag for pure-noise point sources with the exact PSF (Monte Carlo, 400 realisations at
# each matched-filter S/N 20, 50, 200; background-only noise; the fit settings above): in units of
# sigma_m = 1.0857 sigma(F_psf) / F, median 0.62, 0.58, 0.76 and robust spread 0.67, 0.50, 0.44 (at S/N 10:
# 0.82 and 1.04, with a long positive tail). Extended models can only fit noise better than the PSF, hence the
# positive offset.
NULL_OFFSET = 0.65
NULL_SCALE = 0.55
LOCUS_SNR_QUANTILE = 0.7  # the locus centre and width come from the 30% highest-S/N objects


def psf_minus_cmodel_error(fits: ModelFits) -> np.ndarray:
  """(N,) sigma_m = 1.0857 sigma(F_psf) / F_cModel: the statistical noise of psfMag - cModelMag for a point
  source of this object's total (cModel) flux. Using the total flux, not the PSF flux, gives every object of
  the same brightness the same error whatever its class."""
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(fits.cmodel_flux > 0, 2.5 / math.log(10) * fits.psf_flux_err / fits.cmodel_flux, np.nan)


def stellar_locus(difference: np.ndarray, snr: np.ndarray) -> tuple[float, float]:
  """(centre, width) of the stellar locus of psfMag - cModelMag, label-free: among the 30% highest-S/N
  objects, the narrowest mode (stars pile up there, galaxies spread to larger values), and 1.4826 x the
  median distance below it of the values below it (the side galaxies do not reach). (0, 0) if < 10 objects."""
  finite = np.isfinite(difference) & np.isfinite(snr)
  if finite.sum() < 10:
    return 0.0, 0.0
  bright = finite & (snr >= np.quantile(snr[finite], LOCUS_SNR_QUANTILE))
  centre = narrowest_mode(difference[bright])
  below = difference[bright & (difference < centre)]
  width = MAD_TO_SIGMA * float(np.median(centre - below)) if below.size >= 5 else 0.0
  return float(centre), width


def psf_cmodel_significance(fits: ModelFits, locus_centre: float = 0.0, locus_width: float = 0.0
                            ) -> np.ndarray:
  """(N,) the S/N-aware criterion: psfMag - cModelMag in units of its uncertainty for a point source.

  t = (dm - m0 - a sigma_m) / sqrt((c sigma_m)^2 + w^2), with dm = psfMag - cModelMag, sigma_m its statistical
  noise for a point source of this flux (`psf_minus_cmodel_error`), a = NULL_OFFSET and c = NULL_SCALE the
  measured median and spread of dm / sigma_m for pure-noise point sources, and (m0, w) the stellar locus's
  centre and width (`stellar_locus`: label-free, from the set's bright objects; PSF-model and seeing errors
  that do not shrink with S/N). So t is ~0 with unit spread for point sources at every S/N (at S/N < 10 the
  noisy cModel fit widens the tail), and t > 3 means extended beyond what noise and the locus allow. The
  fixed cut dm > 0.145 instead calls 25% of point sources extended at S/N 10 (Monte Carlo above); that is the
  blur this removes. Ranked within a magnitude bin it orders like dm (the same sigma_m at the same flux).
  """
  sigma = psf_minus_cmodel_error(fits)
  return (psf_minus_cmodel(fits) - locus_centre - NULL_OFFSET * sigma) / np.sqrt(
      (NULL_SCALE * sigma) ** 2 + locus_width ** 2)


def sdss_criteria(images, band: int = R_BAND, psf: GaussianMixture | None = None, **fit_options
                  ) -> dict[str, np.ndarray]:
  """(N,) criteria in one band, with the set's own PSF when None: 'psf_minus_cmodel',
  'psf_cmodel_significance' (with the set's own stellar locus) and 'extension_significance'."""
  if psf is None:
    psf = estimate_psf_model(images, band).mixture
  fits = fit_models(images, psf, band, **fit_options)
  difference = psf_minus_cmodel(fits)
  with np.errstate(divide="ignore", invalid="ignore"):
    locus = stellar_locus(difference, fits.cmodel_flux / fits.psf_flux_err)
  return {"psf_minus_cmodel": difference, "psf_cmodel_significance": psf_cmodel_significance(fits, *locus),
          "extension_significance": extension_significance(fits)}
