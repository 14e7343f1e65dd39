"""Vr(AW)+M: the authors' 'analogy of Wasserstein' (tanh on mu); `:star` = AW*, closed-form W2 to the nearest mode.

Study: AUC 0.92 (best of unstable repeats).
"""

from configs import common


ARGUMENTS = ("smoke", "star") + common.ROBUST_ARGUMENTS


def get_config(arg=None):
  if "star" in common.parse_arg(arg, ARGUMENTS):
    return common.vae_penalty_config(arg, ARGUMENTS, "aw_star", dict(m=1.0, s=0.5))
  return common.vae_penalty_config(arg, ARGUMENTS, "aw", {}, mu_activation="tanh")
