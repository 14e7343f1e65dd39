"""shifts: every distribution is valid SimParams of the simulator's own knobs, and reaches the config."""

import dataclasses

import pytest

from conftest import load_config
from stargal_jax import default_data, registry, shifts
from stargal_jax.simulate import SimParams


def test_every_distribution_builds_valid_sim_params():
  defaults = dataclasses.asdict(SimParams())
  for name, distribution in shifts.DISTRIBUTIONS.items():
    params = shifts.sim_params(name)
    assert isinstance(params, SimParams)
    values = dataclasses.asdict(params)
    changed = {k for k in values if values[k] != defaults[k]}
    assert changed == set(distribution.overrides), name  # exactly its own knobs move
    for field, value in distribution.overrides.items():
      assert values[field] == value
  assert shifts.sim_params("default") == SimParams()
  # Each shifted set is cached under its own name; the default keeps the default data's name.
  tags = {default_data.params_tag(shifts.sim_params(name)) for name in shifts.DISTRIBUTIONS}
  assert len(tags) == len(shifts.DISTRIBUTIONS) and "" in tags


def test_apply_to_config_and_unknown_names():
  config = load_config("cvae", "smoke")
  shifts.apply_to_config(config, "seeing_worse")
  assert config.data.sim_params.seeing_r_median_arcsec == 1.7
  assert SimParams.from_dict(config.data.sim_params.to_dict()) == shifts.sim_params("seeing_worse")
  with pytest.raises(registry.UnknownName, match="seeing_worse"):
    shifts.get_distribution("seeing_bad")
  bad = shifts.Distribution({"seeing_fwhm": 2.0}, "a knob the simulator does not have")
  shifts.DISTRIBUTIONS["_test_bad"] = bad
  try:
    with pytest.raises(KeyError, match="seeing_fwhm"):
      shifts.sim_params("_test_bad")
  finally:
    del shifts.DISTRIBUTIONS["_test_bad"]
