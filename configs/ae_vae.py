"""A+Vr: stage-1 conv AE (30-d tanh codes) on the unlabelled set, stage-2 dense VAE on the codes with the exact
KL to a bimodal prior, then Isomap to 1-D. Study: AUC 0.89 (repeats split between ~0.76 and ~0.89).
"""

import ml_collections

from configs import common


def get_config(arg=None):
  config = common.base_config()
  config.pipeline = "ae_vae"
  config.seed_scope = "stage2"  # Seed studies share one stage-1 AE, as the study's 100 runs did.
  config.ae = common.stage1_ae_config(steps=1500)
  config.vae = common.dense_vae_config(steps=3000)
  config.vae.loss = ml_collections.ConfigDict(dict(recon_mse=1.0, dkl=1.0))
  config.vae.loss_options = ml_collections.ConfigDict(dict(dkl=dict(m=1.0, s=0.5)))
  config.score = common.score_config("isomap")
  accepted = ("smoke",) + common.ROBUST_ARGUMENTS
  common.apply_robust_inputs(config, ("ae",), common.robust_pieces(common.parse_arg(arg, accepted)))
  return common.finish(config, arg, accepted)
