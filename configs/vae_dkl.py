"""Vr(DKL)+M: exact KL to the bimodal prior 0.5 N(-m, s^2) + 0.5 N(m, s^2) (closed form plus Gauss-Legendre quadrature
on each side of z = 0, `losses.kl_to_bimodal`).

Study: AUC 0.91 (with its wrong approximate formula; `:authors` selects that formula for reproduction).
"""

from configs import common


ARGUMENTS = ("smoke", "authors") + common.ROBUST_ARGUMENTS


def get_config(arg=None):
  term = "dkl_authors" if "authors" in common.parse_arg(arg, ARGUMENTS) else "dkl"
  return common.vae_penalty_config(arg, ARGUMENTS, term, dict(m=1.0, s=0.5))
