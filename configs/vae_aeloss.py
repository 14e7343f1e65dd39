"""VAE whose reconstruction is measured in a frozen stage-1 AE's feature space (its 30-d codes), then Isomap."""

from configs import common


def get_config(arg=None):
  config = common.base_config()
  config.pipeline = "vae_aeloss"
  config.ae = common.stage1_ae_config(steps=1500)
  config.vae = common.conv_vae_config(steps=1200)
  config.score = common.score_config("isomap")
  return common.finish(config, arg)
