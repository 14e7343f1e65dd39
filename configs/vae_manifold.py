"""V+M baseline: conv VAE, N(0, I) prior, 2-d latent; Isomap (10 neighbours) to 1-D; prior-quantile threshold.

Study: AUC 0.75 (repeats 0.54-0.86). `--config=configs/vae_manifold.py[:smoke]`.
"""

from configs import common


def get_config(arg=None):
  return common.vae_penalty_config(arg, ("smoke",), "kl", {})
