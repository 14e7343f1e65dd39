"""Segmentation for classification: the neighbours found by the hypercolumn segmentation (configs/segmentation.py
settings, residual AE) are replaced by noise in copies of both sets, and the final 'conditional VAE'
classification (configs/cvae.py, unchanged) runs on the masked and on the original inputs; AUC with and without
masking, on all objects and on objects with neighbours. `:smoke` shrinks everything; `:unit0` as in cvae.
"""

from configs import common, cvae, segmentation


def get_config(arg=None):
  config = cvae.get_config(arg)  # accepts cvae's arguments (smoke, unit0, gmm)
  config.seg = segmentation.seg_config(smoke="smoke" in common.parse_arg(arg, cvae.ARGUMENTS))
  config.seg.classifier_pipeline = config.pipeline
  config.pipeline = "seg_cvae"
  return config
