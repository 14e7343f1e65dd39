"""WAE-GAN: the adversarial latent term and the critic it trains against, a term with state of its own.

The trainer knows no term by name: `critic_term(options, latent_dim, learning_rate)` returns a
`base.StatefulTerm` that declares the critic's entries of the train state (`critic`, `critic_opt`), what it
adds to the loss context (`critic_params`), and its own update after each model step.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from stargal_jax.losses.base import (DEFAULT_M, DEFAULT_S, Array, StatefulTerm, check_prior, require,
                                     sample_prior, select_units)

GP_WEIGHT = 10.0  # Gulrajani et al. 2017's gradient-penalty weight
CRITIC_KEY_OFFSET = 10**6  # the critic's initial key: fold_in(train key, this), apart from the model's keys



def init_critic(key: Array, latent_dim: int, hidden: Sequence[int] = (64, 64)) -> list[dict[str, Array]]:
  """MLP critic parameters: a list of {'w': (in, out), 'b': (out,)} layers, last one to a single logit."""
  sizes = (latent_dim, *hidden, 1)
  keys = jax.random.split(key, len(sizes) - 1)
  init = jax.nn.initializers.lecun_normal()
  return [{"w": init(k, (n_in, n_out)), "b": jnp.zeros((n_out,))}
          for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]


def critic_apply(params: Sequence[Mapping[str, Array]], z: Array) -> Array:
  """Critic logits (B,) for latent codes z (B, d); logit > 0 means 'looks like a prior sample'.

  SiLU hidden units: smooth, so the gradient penalty (which differentiates the input gradient) is too.
  """
  h = z
  for layer in params[:-1]:
    h = jax.nn.silu(h @ layer["w"] + layer["b"])
  return (h @ params[-1]["w"] + params[-1]["b"])[:, 0]


def gradient_penalty(critic_params: Sequence[Mapping[str, Array]], z: Array) -> Array:
  """mean over rows of (||grad_z critic(z_i)||_2 - 1)^2 (Gulrajani et al. 2017)."""
  grad_z = jax.grad(lambda zz: jnp.sum(critic_apply(critic_params, zz)))(z)  # Rows are independent.
  norm = jnp.sqrt(jnp.sum(grad_z**2, axis=-1) + 1e-12)  # eps: sqrt has an infinite derivative at 0.
  return jnp.mean((norm - 1.0) ** 2)


def interpolate(key: Array, z_q: Array, z_p: Array) -> Array:
  """Random points on the segments between paired rows of z_q and z_p, where the penalty is applied."""
  alpha = jax.random.uniform(key, (z_q.shape[0], 1), dtype=z_q.dtype)
  return alpha * z_p + (1.0 - alpha) * z_q


def critic_loss(critic_params: Sequence[Mapping[str, Array]], z_q: Array, z_p: Array, key: Array,
                gp_weight: float = GP_WEIGHT) -> Array:
  """The critic's loss: logistic loss with prior samples z_p as 'real' and encoded z_q as 'fake',

  plus gp_weight times the gradient penalty on interpolates. The trainer passes z_q without gradient
  to the encoder (jax.lax.stop_gradient) and z_p from `sample_prior` with the adversarial term's options.
  """
  logistic = (jnp.mean(jax.nn.softplus(-critic_apply(critic_params, z_p)))
              + jnp.mean(jax.nn.softplus(critic_apply(critic_params, z_q))))
  return logistic + gp_weight * gradient_penalty(critic_params, interpolate(key, z_q, z_p))


def adversarial(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
                prior: str = "bimodal", m: float = DEFAULT_M, s: float = DEFAULT_S,
                gp_weight: float = GP_WEIGHT) -> Array:
  """WAE-GAN, encoder side: the non-saturating loss -log D(z) = softplus(-logit) on the encoded z.

  `prior`, `m`, `s` and `gp_weight` do not change this value (the encoder's loss only sees z); they live here
  so one options entry configures both sides: the critic (`critic_term`) draws its z_p with
  sample_prior(key, shape, prior, m, s) and weighs its gradient penalty by `gp_weight`. The critic's input is
  z[:, units], so init_critic's latent_dim must be the number of selected units.
  """
  check_prior(prior)
  z = select_units(require(outputs, "z", "adversarial", "outputs"), units)
  logits = critic_apply(require(context, "critic_params", "adversarial", "context"), z)
  return jnp.mean(jax.nn.softplus(-logits))


def critic_term(options: Mapping, latent_dim: int | None, learning_rate: float) -> StatefulTerm:
  """The critic beside a model trained with the adversarial term (its `options`, as in the loss config).

  Its optimiser is Adam at the model's learning rate. Each step, after the model's update: prior samples z_p
  (sample_prior with the term's prior, m, s) against the encoded z[:, units] without gradient into the
  encoder, logistic loss plus `gp_weight` times the gradient penalty.
  """
  options = dict(options)
  units = options.pop("units", None)
  gp_weight = options.pop("gp_weight", GP_WEIGHT)
  prior_options = options  # prior, m, s
  critic_dim = len(units) if units is not None else latent_dim
  if critic_dim is None:
    raise ValueError("the adversarial term needs the model's latent_dim (or `units`) to size its critic")
  optimizer = optax.adam(learning_rate)

  def init(key: Array) -> dict:
    critic = init_critic(jax.random.fold_in(key, CRITIC_KEY_OFFSET), critic_dim)
    return {"critic": critic, "critic_opt": optimizer.init(critic)}

  def update(state: Mapping, outputs: Mapping, key: Array) -> tuple[dict, dict]:
    critic_key, prior_key = jax.random.split(jax.random.fold_in(key, 1))
    z = outputs["z"]
    z_q = jax.lax.stop_gradient(z if units is None else z[:, jnp.asarray(units)])
    z_p = sample_prior(prior_key, z_q.shape, **prior_options).astype(z_q.dtype)
    loss, grads = jax.value_and_grad(critic_loss)(state["critic"], z_q, z_p, critic_key, gp_weight=gp_weight)
    updates, new_opt_state = optimizer.update(grads, state["critic_opt"], state["critic"])
    return {"critic": optax.apply_updates(state["critic"], updates), "critic_opt": new_opt_state}, \
        {"critic_loss": loss}

  return StatefulTerm(init=init, context=lambda state: {"critic_params": state["critic"]}, update=update,
                      outputs=("z",))
