"""A+M: a plain conv AE (no KL) with a 2-d latent, then Isomap to 1-D and the prior-quantile threshold."""

import ml_collections

from configs import common


def get_config(arg=None):
  config = common.base_config()
  config.pipeline = "vae_manifold"
  config.vae = common.conv_vae_config(steps=1200)
  config.vae.model = "conv_ae"
  config.vae.model_kwargs = ml_collections.ConfigDict(dict(
      latent_dim=2, channels=(32, 64, 128, 256), activation="relu", norm="none", latent_activation="none"))
  config.vae.loss = ml_collections.ConfigDict(dict(recon_mse=1.0))
  config.score = common.score_config("isomap")
  accepted = ("smoke",) + common.ROBUST_ARGUMENTS
  common.apply_robust_inputs(config, ("vae",), common.robust_pieces(common.parse_arg(arg, accepted)))
  return common.finish(config, arg, accepted)
