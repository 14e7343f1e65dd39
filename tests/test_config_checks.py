"""config_checks: rules and their one-line messages, the generic finiteness of unnamed settings, stage blocks
traced abstractly, and every numeric setting of every shipped config named by a rule of its run."""

import math
from pathlib import Path

import ml_collections
import pytest

from stargal_jax import config_checks as cc
from stargal_jax import experiment
from conftest import load_config

REPO = Path(__file__).resolve().parents[1]


def test_rules_say_what_is_wrong():
  assert cc.integer(1)(0) == "must be an integer >= 1"
  assert cc.integer(1)(True) == "must be an integer >= 1" and cc.integer(1)(2.0) == "must be an integer >= 1"
  assert cc.integer(0, 7)(8) == "must be an integer >= 0 and <= 7" and cc.integer(0, 7)(7) is None
  assert cc.number(0, 1, low_open=True, high_open=True)(1.0) == "must be in (0, 1)"
  assert cc.number(0, low_open=True)(math.nan) == "must be a finite number > 0"
  assert cc.number(0)(0) is None and cc.number(0)(-1e-9) == "must be >= 0"
  assert cc.choice(("a", "b"), "policy")("c") == "unknown policy 'c'; valid: ['a', 'b']"
  assert cc.each(cc.integer(2))((3, 1)) == "item 1 (1) must be an integer >= 2" and cc.each(cc.integer())(()) == \
      "must not be empty"
  assert cc.increasing((19.0, 19.0)) == "must be strictly increasing" and cc.increasing(()) is None
  assert cc.letters_of("ugriz", "bands")("gry").startswith("must be distinct bands")
  assert cc.boolean(1) == "must be True or False"


def test_an_unnamed_numeric_setting_must_still_be_finite():
  config = ml_collections.ConfigDict(dict(a=1, b=dict(c=math.inf, d=(1.0, math.nan)), e="x"))
  assert cc.setting_problems(config, {}) == ["config.b.c = inf: must be finite",
                                             "config.b.d = (1.0, nan): must be finite"]
  with pytest.raises(cc.ConfigError, match=r"config.b.c = inf: must be finite; config.b.d"):
    cc.check_config(config, {})


def test_a_stage_is_traced_through_the_model_and_loss_registries():
  config = load_config("vae_manifold")
  shapes = cc.check_stage(config, "vae")
  assert shapes["mu"] == (2,) and shapes["recon"] == (64, 64, 5)
  config.vae.loss = ml_collections.ConfigDict(dict(recon_mse=1.0, kl=0.0))
  config.vae.loss_options = ml_collections.ConfigDict(dict(kl=dict(units=(0,))))
  cc.check_stage(config, "vae")  # a weight-0 term with options is fine: it can be switched on from the command line
  ae = load_config("ae_manifold")
  ae.vae.loss = ml_collections.ConfigDict(dict(recon_mse=1.0, kl=1.0))  # a KL on an AE, which has no `mu`
  with pytest.raises(cc.ConfigError, match=r"config.vae \(model 'conv_ae'\): loss term 'kl' needs outputs\['mu'\]"):
    cc.check_stage(ae, "vae")
  config.vae.loss = ml_collections.ConfigDict(dict(recon_mse=0.0))
  with pytest.raises(cc.ConfigError, match="at least one loss term needs a weight > 0"):
    cc.check_stage(config, "vae")
  config.vae.loss = ml_collections.ConfigDict(dict(recon_mse=1.0))
  with pytest.raises(cc.ConfigError, match=r"loss_options names \['kl'\], which config.vae.loss does not weight"):
    cc.check_stage(config, "vae")


def test_a_later_encoder_stage_is_traced_on_the_codes_of_the_one_before():
  config = load_config("cvae")
  shapes = experiment.classification_stages(config)
  assert shapes["ae"]["z"] == (30,) and shapes["vae"]["recon"] == (30,)
  config.vae.model_kwargs.in_dim = 20
  with pytest.raises(cc.ConfigError, match=r"config.vae \(model 'dense_vae'\)"):
    experiment.classification_stages(config)
  config = load_config("cvae", "smoke,unit0")
  config.score.unit = 2
  with pytest.raises(cc.ConfigError, match=r"config.score.unit = 2: must be < 2"):
    experiment.classification_stages(config)


def _config_files():
  return [p.stem for p in sorted((REPO / "configs").glob("*.py")) if p.stem not in ("__init__", "common")]


@pytest.mark.parametrize("name", _config_files())
def test_every_numeric_setting_of_a_shipped_config_is_named_by_a_rule_of_its_run(name):
  """So that a setting added to a config gets a range, not only the generic finiteness."""
  config = load_config(name)
  settings = experiment.RUNS[config.pipeline].settings
  unnamed = [path for path, value in cc.leaves(config) if not cc.rules_for(path, settings)
             and any(isinstance(v, (int, float)) and not isinstance(v, bool)
                     for v in (value if isinstance(value, (tuple, list)) else (value,)))]
  assert not unnamed, f"numeric settings without a rule in experiment.RUNS[{config.pipeline!r}].settings: {unnamed}"
