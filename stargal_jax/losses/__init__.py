"""Loss terms: small pure JAX functions, combined by weight into one loss by `make_loss_fn`.

- `base`: the conventions every term follows (signature, `units`, priors and their samples).
- `terms`: reconstruction, KL-type and Wasserstein-flavoured penalties, and a binary cross-entropy on labels.
- `adversarial`: WAE-GAN's encoder term and its critic, a `StatefulTerm` the trainer carries without knowing it.

The names below are the package's public surface; `LOSS_TERMS` and `STATEFUL_TERMS` are the registries.
"""

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stargal_jax import registry
from stargal_jax.losses.adversarial import (GP_WEIGHT, adversarial, critic_apply, critic_loss, critic_term,
                                            gradient_penalty, init_critic, interpolate)
from stargal_jax.losses.base import (DEFAULT_M, DEFAULT_S, PRIORS, Array, LossFn, LossTerm, StatefulTerm,
                                     sample_prior)
from stargal_jax.losses.terms import (MMD_SCALES, aw, aw_star, bce, dkl, dkl_authors, kl, kl_to_bimodal,
                                      kl_to_bimodal_authors, l2_density_distance, mmd, mmd_imq, pw, pw_star,
                                      radial_window, recon_mse, recon_nll, recon_window, sc)

__all__ = ["DEFAULT_M", "DEFAULT_S", "GP_WEIGHT", "LABEL_TERMS", "LOSS_TERMS", "MMD_SCALES", "PRIORS", "STATEFUL_TERMS", "Array",
           "LossFn", "LossTerm", "StatefulTerm", "adversarial", "aw", "aw_star", "bce", "critic_apply", "critic_loss",
           "critic_term", "dkl", "dkl_authors", "gradient_penalty", "init_critic", "interpolate", "kl",
           "kl_to_bimodal", "kl_to_bimodal_authors", "l2_density_distance", "make_loss_fn", "mmd", "mmd_imq", "pw",
           "pw_star", "radial_window", "recon_mse", "recon_nll", "recon_window", "sample_prior", "sc", "stateful_terms",
           "term_options"]

# The order matters: each term's PRNG key is folded from the step's by its position here.
LOSS_TERMS: dict[str, LossTerm] = {
    "recon_mse": recon_mse,
    "recon_nll": recon_nll,
    "kl": kl,
    "sc": sc,
    "dkl": dkl,
    "dkl_authors": dkl_authors,
    "aw": aw,
    "aw_star": aw_star,
    "pw": pw,
    "pw_star": pw_star,
    "mmd": mmd,
    "adversarial": adversarial,
    "recon_window": recon_window,  # added last: the keys of the terms above keep their positions
    "bce": bce,  # after recon_window, for the same reason
}
# Terms that read the batch's 'label' (B,) beside its images (the classifier stages' pseudo- or true labels).
LABEL_TERMS: frozenset[str] = frozenset({"bce"})
# Terms with state of their own: name -> builder(options, latent_dim, learning_rate) -> StatefulTerm.
STATEFUL_TERMS: dict[str, Callable[..., StatefulTerm]] = {"adversarial": critic_term}


def term_options(term: LossTerm) -> tuple[str, ...]:
  """The option names a term accepts (its keyword-only parameters)."""
  parameters = inspect.signature(term).parameters.values()
  return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _as_dict(mapping: Any) -> dict:
  """Plain dict from a Mapping or an ml_collections.ConfigDict (which is not a Mapping)."""
  return dict(mapping.items()) if mapping is not None else {}


def _normalise_options(name: str, term: LossTerm, options: Any) -> dict:
  options = _as_dict(options)
  valid = term_options(term)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise registry.unknown(f"option of loss term {name!r}", unknown[0], valid)
  if options.get("units") is not None:  # Lists from the command line; a tuple keeps it hashable.
    options["units"] = tuple(int(u) for u in np.atleast_1d(options["units"]))
  return options


def make_loss_fn(weights: Mapping[str, float], options: Mapping[str, Mapping] | None = None) -> LossFn:
  """loss_fn(outputs, batch, context) -> (total, metrics): the weighted sum of the named terms.

  Terms with weight 0 are left out (never traced). metrics holds each included term's unweighted value
  and 'total'. Each term sees its own PRNG key, folded from context['key'] by the term's registry position,
  so two sampling terms never share prior samples. Unknown names or options raise ValueError at once.
  """
  weights, options = _as_dict(weights), _as_dict(options)
  for kind, names in (("weights", weights), ("options", options)):
    for name in names:
      registry.lookup(LOSS_TERMS, name, f"loss term (in {kind})")
  term_ids = {name: i for i, name in enumerate(LOSS_TERMS)}
  bound = {name: functools.partial(LOSS_TERMS[name], **_normalise_options(name, LOSS_TERMS[name], opts))
           for name, opts in options.items()}
  active = {name: (float(weight), bound.get(name, LOSS_TERMS[name]))
            for name, weight in weights.items() if float(weight) != 0.0}

  def loss_fn(outputs: Mapping, batch: Mapping, context: Mapping) -> tuple[Array, dict[str, Array]]:
    metrics, total = {}, jnp.zeros(())
    for name, (weight, term) in active.items():
      term_context = dict(context)
      if "key" in context:
        term_context["key"] = jax.random.fold_in(context["key"], term_ids[name])
      metrics[name] = term(outputs, batch, term_context)
      total = total + weight * metrics[name]
    metrics["total"] = total
    return total, metrics

  return loss_fn


def stateful_terms(weights: Mapping[str, float], options: Mapping[str, Mapping] | None, latent_dim: int | None,
                   learning_rate: float) -> list[StatefulTerm]:
  """The stateful terms among the weighted ones (weight 0: left out, as in make_loss_fn), built."""
  weights, options = _as_dict(weights), _as_dict(options)
  return [STATEFUL_TERMS[name](_as_dict(options.get(name)), latent_dim, learning_rate)
          for name, weight in weights.items() if name in STATEFUL_TERMS and float(weight) != 0.0]
