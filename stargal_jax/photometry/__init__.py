"""Model-fit photometry of cutouts as the SDSS pipeline (PHOTO) does it: PSF, de Vaucouleurs, exponential and
composite (cModel) fluxes, and the star-galaxy criteria built from them.

SDSS separates stars from galaxies with psfMag - cModelMag > 0.145 (Stoughton et al. 2002, AJ 123, 485; Abazajian
et al. 2004): a point source's light is all in the PSF, a galaxy's spreads beyond it. This module measures that
criterion on the project's cutouts, label-free, and a S/N-aware version of it.

Conventions (as `stargal_jax.morphology`): images are float (N, 5, H, W) nanomaggies, bands u, g, r, i, z,
sky-subtracted, 0.396"/px, the object at array coordinate (H // 2, W // 2). Pixel coordinates are (row, column)
= (y, x); covariances are 2 x 2 in that order, in px^2. Each cutout is first background-subtracted (median of
the pixels at radius >= 24 px) and its noise measured there (1.4826 x MAD), as in morphology.

1. Profiles. Exponential and de Vaucouleurs profiles are mixtures of concentric Gaussians (Hogg & Lang 2013,
   PASP 125, 719), fitted here (`fit_sersic_mixture`) to the radial profile and enclosed flux of the analytic
   Sersic profile: EXP_MIXTURE (6 Gaussians, the untruncated exponential, enclosed flux within 1.3e-4 of the
   truth) and DEV_MIXTURE (6 Gaussians, the de Vaucouleurs profile with SDSS's soft truncation, tapered to 0
   between 7 and 8 r_e, enclosed flux within 5e-3). A model galaxy of effective radius r_e, axis ratio q and
   position angle phi is the mixture with covariances v_k r_e^2 R diag(1/q, q) R^T: r_e is the circularised
   half-light radius sqrt(a b).
2. PSF. Either a `GaussianMixture` given per object or shared (e.g. per-field PSFs, or the simulator's truth,
   through `psf_mixture_from_images`), or estimated from the set itself (`estimate_psf_model`): the bright,
   isolated, point-like objects (the narrowest mode of the adaptive sizes, as `morphology.estimate_psf`) are
   recentred, normalised and median-stacked, and a mixture of PSF_COMPONENTS elliptical Gaussians is fitted to
   the stack. The stack samples the pixel-convolved ("effective") PSF, so models convolved with it and sampled
   at pixel centres are pixel-integrated. Limits of a set-level PSF: one PSF per set, while seeing varies from
   field to field (and, in the simulator, from cutout to cutout): a star seen in worse seeing than the set's
   PSF looks slightly extended, one in better seeing slightly compact. Give per-object PSFs where known.
3. Fits (`fit_models`, JAX, jitted and vmapped over objects, blocks of BLOCK_SIZE): in a FIT_BOX x FIT_BOX box
   about the centre, with inverse-variance weights from each cutout's background noise (background-only: the
   object's own Poisson noise cannot be estimated label-free from sky-subtracted nanomaggies; pass `variance`
   maps, e.g. from `stargal_jax.sdss_frames`, to include it) and neighbours masked (connected regions above
   NEIGHBOUR_THRESHOLD_SIGMA that do not touch the centre):
   - PSF: flux (linear) and a centre shift of at most MAX_SHIFT_PX (Levenberg-Marquardt);
   - deV and exp: flux (solved linearly for each shape, variable projection), and by Levenberg-Marquardt
     (N_LM_STEPS steps from the best of a small grid of circular sizes) the shape: centre shift, log r_e and the
     two ellipticity components;
   - cModel as SDSS: the best non-negative combination a T_deV + b T_exp of the best-fit unit-flux deV and exp
     model images gives fracDeV = a / (a + b), and cModelFlux = fracDeV F_deV + (1 - fracDeV) F_exp.
4. Criteria: `psf_minus_cmodel` = psfMag - cModelMag = -2.5 log10(F_psf / F_cModel) (> 0.145: extended, SDSS);
   `psf_cmodel_significance`, the same in units of its uncertainty (statistical and the set's stellar-locus
   width), ~0 with unit spread for point sources at every S/N; and `extension_significance`, a linear test
   with an exact N(0, 1) null (see the docstrings; measured on simulations it ranks worse, kept as a diagnostic).

Modules: `profiles` (the Gaussian-mixture profiles), `kernels` (JAX rendering and fitting kernels), `fitting`
(`fit_models`), `psf` (the set's own PSF), `criteria` (psfMag - cModelMag and its significance).
"""

from stargal_jax.photometry.criteria import (psf_cmodel_significance, psf_minus_cmodel_error, sdss_criteria,
                                             stellar_locus)
from stargal_jax.photometry.fitting import (FIT_BOX, R_BAND, SDSS_EXTENDED_CUT_MAG, ModelFits,
                                            extension_significance, fit_models, flux_to_magnitude,
                                            neighbour_mask, prepare_band, psf_minus_cmodel)
from stargal_jax.photometry.profiles import (DEV_MIXTURE, DEV_TRUNCATION, EXP_MIXTURE, GaussianMixture,
                                             ProfileMixture, fit_sersic_mixture, mixture_enclosed,
                                             mixture_profile, sersic_b, sersic_enclosed, sersic_profile)
from stargal_jax.photometry.psf import (GAUSSIAN_FWHM_PER_SIGMA, MIN_PSF_STARS, PsfModel, adaptive_moments,
                                        estimate_psf_model, gaussian_psf_mixture, mixture_fwhm_px, mixture_image,
                                        narrowest_mode, psf_mixture_from_images, select_psf_stars, stack_psf)

__all__ = [
    "DEV_MIXTURE", "DEV_TRUNCATION", "EXP_MIXTURE", "FIT_BOX", "GAUSSIAN_FWHM_PER_SIGMA", "GaussianMixture",
    "MIN_PSF_STARS", "ModelFits", "ProfileMixture", "PsfModel", "R_BAND", "SDSS_EXTENDED_CUT_MAG",
    "adaptive_moments", "estimate_psf_model", "extension_significance", "fit_models", "fit_sersic_mixture",
    "flux_to_magnitude", "gaussian_psf_mixture", "mixture_enclosed", "mixture_fwhm_px", "mixture_image",
    "mixture_profile", "narrowest_mode", "neighbour_mask", "prepare_band", "psf_cmodel_significance",
    "psf_minus_cmodel", "psf_minus_cmodel_error", "psf_mixture_from_images", "sdss_criteria", "select_psf_stars",
    "sersic_b", "sersic_enclosed", "sersic_profile", "stack_psf", "stellar_locus",
]
