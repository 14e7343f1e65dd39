"""Wasserstein autoencoders on the bimodal prior: the conv VAE's latent matched to Q = 0.5 N(-m, s^2) +
0.5 N(m, s^2) by MMD (inverse multiquadric kernel, WAE-MMD; default) or by an adversarial latent critic with a
gradient penalty (WAE-GAN, `:adversarial`). Principled alternatives the project adds beside the study's terms.
"""

from configs import common


ARGUMENTS = ("smoke", "adversarial") + common.ROBUST_ARGUMENTS


def get_config(arg=None):
  if "adversarial" in common.parse_arg(arg, ARGUMENTS):
    # gp_weight: the critic's gradient-penalty weight (Gulrajani et al. 2017's 10).
    return common.vae_penalty_config(arg, ARGUMENTS, "adversarial",
                                     dict(prior="bimodal", m=1.0, s=0.5, gp_weight=10.0))
  return common.vae_penalty_config(arg, ARGUMENTS, "mmd", dict(prior="bimodal", m=1.0, s=0.5))
