"""Named data distributions: the default simulation and deliberately shifted ones, made by the simulator's own knobs.

`DISTRIBUTIONS` maps a name to overrides of `stargal_jax.simulate.SimParams` fields (every field is in the configs
as `config.data.sim_params.<field>`; a shifted set is cached under its own name, `default_data.params_tag`). The
robustness protocol (`stargal_jax.robustness`) judges every design on all of them; the segmentation wing reuses
them. A shift changes one physical condition against the default, so a drop in a design's AUC names its cause:

- seeing_worse: the r-band median seeing 1.3" -> 1.7" FWHM (more galaxies unresolved);
- deeper: exposures one magnitude deeper (`depth_mag` 1: the S/N 5 limit one magnitude fainter, more faint
  low-S/N objects detected);
- galaxies_smaller / galaxies_larger: galaxy half-light radii x0.7 / x1.4 against the size relation;
- stars_0.2 / stars_0.6: 20% / 60% point sources instead of 43% (the prior threshold stays at the config's
  `data.star_fraction`, as a user's prior would: the label-free AUC does not depend on it, the accuracy does);
- no_neighbours / many_neighbours: no field sources around the central object / three times the high-latitude
  density (`neighbour_density_scale` 0 / 3).

`hard` is the set the fixes of the designs were chosen on (README): central objects r 19-23.5 only, median seeing
1.5". It is never a reported result: a design's settings are not judged on the set they were tuned on.
"""

from __future__ import annotations

import dataclasses

from stargal_jax import registry
from stargal_jax.simulate import SimParams


@dataclasses.dataclass(frozen=True)
class Distribution:
  overrides: dict  # SimParams field -> value, against the simulator's defaults
  description: str


DISTRIBUTIONS: dict[str, Distribution] = {
    "default": Distribution({}, "the simulator's defaults: the project's default data"),
    "seeing_worse": Distribution({"seeing_r_median_arcsec": 1.7}, "median r seeing 1.7\" FWHM (default 1.3\")"),
    "deeper": Distribution({"depth_mag": 1.0}, "one magnitude deeper exposures (depth_mag 1, default 0)"),
    "galaxies_smaller": Distribution({"galaxy_size_scale": 0.7}, "galaxy sizes x0.7 of the size relation"),
    "galaxies_larger": Distribution({"galaxy_size_scale": 1.4}, "galaxy sizes x1.4 of the size relation"),
    "stars_0.2": Distribution({"point_fraction": 0.2}, "20% point sources (default 43%)"),
    "stars_0.6": Distribution({"point_fraction": 0.6}, "60% point sources (default 43%)"),
    "no_neighbours": Distribution({"neighbour_density_scale": 0.0}, "no neighbours (default density 1)"),
    "many_neighbours": Distribution({"neighbour_density_scale": 3.0}, "3x the neighbour density"),
    "hard": Distribution({"r_bright_limit": 19.0, "seeing_r_median_arcsec": 1.5},
                         "tuning set: central objects r 19-23.5 only, median seeing 1.5\""),
}


def get_distribution(name: str) -> Distribution:
  return registry.lookup(DISTRIBUTIONS, name, "data distribution")


def sim_params(name: str, base: SimParams | None = None) -> SimParams:
  """The SimParams of distribution `name`: `base` (the simulator's defaults when None) with its overrides."""
  values = dataclasses.asdict(base if base is not None else SimParams())
  return SimParams.from_dict({**values, **get_distribution(name).overrides})


def apply_to_config(config, name: str) -> None:
  """Sets `config.data.sim_params` to distribution `name` (its overrides over the config's own values)."""
  base = SimParams.from_dict(config.data.sim_params.to_dict())
  for field, value in dataclasses.asdict(sim_params(name, base)).items():
    config.data.sim_params[field] = value
