"""segment.hypercolumns: the jitted hypercolumn function against eager features; the detection channel."""

import ml_collections
import numpy as np
import pytest

from stargal_jax import models, train
from stargal_jax.segment import hypercolumns, pixels


@pytest.fixture(scope="module")
def tiny_model():
  model = models.build_model("residual_conv_ae", dict(latent_dim=4, channels=(4, 4, 4, 4)), 0)
  graphdef, params, state = models.split_model(model)
  return train.TrainResult(graphdef, params, state, [])


def test_hypercolumn_fn_matches_eager_features(tiny_model):
  x = np.random.default_rng(0).normal(size=(3, 64, 64, 5)).astype(np.float32)
  layers = (0, 6, 7)
  outputs, _ = models.apply_model(tiny_model.graphdef, tiny_model.params, tiny_model.model_state, x,
                                  return_features=True)
  expected = models.hypercolumns([outputs["features"][i] for i in layers])
  got = hypercolumns.make_hypercolumn_fn(tiny_model, layers)(x)
  assert got.shape == (3, 64, 64, 12)
  np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="out of range"):
    hypercolumns.make_hypercolumn_fn(tiny_model, (8,))(x)


def test_detection_channel_is_appended_with_its_share_of_the_variance(tiny_model):
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 5)).astype(np.float32)
  detection = hypercolumns.DetectionChannel(share=0.5, sigma_px=1.2)
  got = hypercolumns.make_hypercolumn_fn(tiny_model, (0, 6, 7), detection=detection)(x)
  np.testing.assert_allclose(got[..., :12], hypercolumns.make_hypercolumn_fn(tiny_model, (0, 6, 7))(x))
  np.testing.assert_allclose(got[..., 12], pixels.detection_image(np.transpose(x, (0, 3, 1, 2)), "gri", 1.2))
  for share in (0.25, 0.5, 0.75):
    w = hypercolumns.DetectionChannel(share=share).weights(13)
    assert np.all(w[:12] == 1.0) and w[12] ** 2 / (w[12] ** 2 + 12) == pytest.approx(share)
  config = ml_collections.ConfigDict(dict(detection_share=0.0, detection_sigma_px=1.2, snr_bands="gri"))
  assert hypercolumns.DetectionChannel.from_config(config) is None
  config.detection_share = 1.0
  with pytest.raises(ValueError, match="detection_share"):
    hypercolumns.DetectionChannel.from_config(config)
