"""Vr(DKL)+M: exact KL to the bimodal prior 0.5 N(-m, s^2) + 0.5 N(m, s^2) by Gauss-Hermite quadrature.

Study: AUC 0.91 (with its wrong approximate formula; `:authors` selects that formula for reproduction).
"""

from configs import common


def get_config(arg=None):
  term = "dkl_authors" if "authors" in common.parse_arg(arg) else "dkl"
  return common.vae_penalty_config(arg, term, dict(m=1.0, s=0.5))
