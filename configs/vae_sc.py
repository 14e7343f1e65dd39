"""Vr(SC)+M: the authors' 'scaling' bound on the bimodal prior (acts like a single Gaussian). Study: AUC 0.82."""

from configs import common


def get_config(arg=None):
  return common.vae_penalty_config(arg, ("smoke",), "sc", dict(m=1.0, s=0.5))
