"""Beyond the study: a CNN bootstrapped from the unlabelled set's bright end, label-free (`classify.bootstrap`).

The unlabelled set's bright objects (model-fit S/N >= 50) are pseudo-labelled by SDSS's own criterion
psfMag - cModelMag (the set's own PSF and stellar locus; star below 0.145 - 0.05, galaxy above 0.145 + 0.05),
degraded at every step to the set's faint end (magnitudes from its own distribution, its own noise and noise
spectrum, its stars' seeing, galaxies shrunk by 10^(0.2 a dm) with a ~ U(0, 1) and reconvolved to the PSF
width, sub-pixel shifts, dihedral group), and a small CNN (`conv_classifier`, binary cross-entropy) is trained
on them with the project's trainer. Score: the CNN's logit on the labelled set (larger = galaxy by
construction), point-like below the prior star fraction. No label is read in training, scoring, sign or
threshold; `eval.supervised_cnn` trains the same network on the labels (5-fold) as the reference.

Pseudo-galaxies are seeing-aware by default: extended even against the set's worst plausible seeing, measured
from its own point-like objects, with a cModel fit that describes them (chosen on the 'hard' tuning set: purity
0.95 there against 0.73 for one PSF per set; README).

Arguments: `smoke` (tiny, seconds), `student` (a second, noisy-student round on the set's confident objects),
`set_psf` (the earlier rule: pseudo-galaxies from one PSF for the whole set), `galaxy_cut` (pseudo-galaxies only
above 0.5, not 0.195; with `set_psf`, its purer variant on the tuning set), `no_shrink` (no size change),
`white_noise` (added noise white, not the set's measured spectrum), `no_reference` (skip the supervised CNN
reference).
"""

import ml_collections

from configs import common

ARGUMENTS = ("smoke", "student", "no_shrink", "white_noise", "no_reference", "galaxy_cut", "set_psf")


def bootstrap_config() -> ml_collections.ConfigDict:
  settings = ml_collections.ConfigDict()
  settings.pseudo = ml_collections.ConfigDict(dict(
      min_snr=50.0,  # model-fit S/N (cModel flux / PSF-flux error) of the bright end
      cut=0.145,  # SDSS: psfMag - cModelMag > 0.145 is extended
      margin=0.05,  # guard band about the cut, left unlabelled
      # Above the cut, for galaxies. A set-level PSF makes stars in worse seeing than the set's look extended,
      # and blends too: the galaxy side needs a wider band than the star side (`galaxy_cut` argument).
      galaxy_margin=0.05,
      # Galaxies extended even against the set's worst plausible seeing (False, the `set_psf` argument: one PSF,
      # the set's): psfMag - cModelMag against the set's PSF dilated to the seeing_quantile quantile of its
      # point-like objects' sizes (classify.bootstrap.seeing_aware_galaxies), and a cModel fit that describes
      # the object (chi^2 per pixel below max_galaxy_chi2: no blend). The quantile and chi^2 bound were chosen
      # on the 'hard' tuning set. The pseudo-star rule is the same either way.
      seeing_aware=True,
      seeing_quantile=0.8,
      max_galaxy_chi2=5.0,
      preselect_fraction=0.5,  # fits only where the 2" aperture S/N reaches this fraction of min_snr
      max_fit=3000,  # at most this many model fits (evenly thinned in the set's order)
      correlated_noise=True))  # reproduce the set's measured noise power spectrum (False: white)
  settings.degrade = ml_collections.ConfigDict(dict(
      shrink_exponent_max=1.0,  # s = 10^(0.2 a dm), a ~ U(0, 1): 1 = the same galaxy moved farther away
      max_scale=4.0,
      broaden=True,  # seeing drawn from the set's stars (never sharper than the source)
      max_shift_px=0.5,
      keep_bright_fraction=0.1))  # this share of each batch keeps its own magnitude
  settings.rounds = 1  # > 1: noisy-student rounds on the set's own confident objects
  settings.student_confident_logit = 3.0  # |logit| above this (p < 0.05 or > 0.95) labels a real object
  settings.student_real_fraction = 0.5  # share of each student batch from those real objects
  settings.stop_changed_fraction = 0.01  # stop when fewer objects than this change class between rounds
  return settings


def get_config(arg=None):
  args = common.parse_arg(arg, ARGUMENTS)
  config = common.base_config()
  config.pipeline = "bootstrap"
  config.classifier = common.classifier_config(steps=2000)
  # Members of the classifier ensemble (stages.ensemble_size): chosen on a tuning draw (1.7" seeing, data seed 7,
  # never reported), where single seeds' AUCs spread 0.925-0.957 and three members' mean logit gave 0.956.
  config.classifier.ensemble = 3
  config.bootstrap = bootstrap_config()
  config.score = common.score_config("latent_unit", unit=0)  # the logit itself
  config.eval.supervised_cnn = "no_reference" not in args
  config.eval.supervised_ceiling = False  # logistic regression on a 1-d logit says nothing new
  if "galaxy_cut" in args:  # galaxies above psfMag - cModelMag = 0.5 (chosen on the 'hard' tuning set)
    config.bootstrap.pseudo.galaxy_margin = 0.35
  if "set_psf" in args:  # galaxies from one PSF for the whole set (the rule before the seeing-aware one)
    config.bootstrap.pseudo.seeing_aware = False
  if "student" in args:
    config.bootstrap.rounds = 3
  if "no_shrink" in args:
    config.bootstrap.degrade.shrink_exponent_max = 0.0
  if "white_noise" in args:
    config.bootstrap.pseudo.correlated_noise = False
  if "smoke" in args:
    config.classifier.train.update(steps=6, batch_size=32, checkpoint_every=3, log_every=2)
    config.classifier.model_kwargs.update(channels=(8, 16), stem_channels=8, crop=16, hidden=16)
    config.supervised_cnn.model_kwargs.update(channels=(8, 16), stem_channels=8, crop=16, hidden=16)
    config.supervised_cnn.folds = 2
    config.bootstrap.pseudo.update(min_snr=20.0, max_fit=150)
  return common.finish(config, arg, ARGUMENTS)
