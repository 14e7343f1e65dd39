"""Vr(PW)+M: the authors' 'pseudo-Wasserstein' (||mu||^2 + closed-form L2 density distance); `:star` = PW*,
the sorted 1-D W2 between batch samples and prior samples (sliced-Wasserstein AE). Study: AUC 0.88.
"""

from configs import common


ARGUMENTS = ("smoke", "star") + common.ROBUST_ARGUMENTS


def get_config(arg=None):
  if "star" in common.parse_arg(arg, ARGUMENTS):
    return common.vae_penalty_config(arg, ARGUMENTS, "pw_star", dict(prior="bimodal", m=1.0, s=0.5))
  return common.vae_penalty_config(arg, ARGUMENTS, "pw", dict(m=1.5, s=1.0))
