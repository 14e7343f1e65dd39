"""losses.adversarial: the critic against a numpy forward pass and finite differences; the critic as a
stateful term, one update against an Adam step on its loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stargal_jax import losses
from loss_helpers import init_critic, normal, np_critic, term_context


def test_critic_shapes_and_generator_loss():
  params = init_critic(jax.random.key(0), 3, (16, 8))
  assert [layer["w"].shape for layer in params] == [(3, 16), (16, 8), (8, 1)]
  z = normal(1, (5, 3))
  np.testing.assert_allclose(losses.critic_apply(params, z), np_critic(params, z), rtol=1e-5, atol=1e-6)
  value = losses.adversarial({"z": z}, {}, {"critic_params": params})
  np.testing.assert_allclose(value, np.mean(np.logaddexp(0, -np_critic(params, z))), rtol=1e-5)


def test_gradient_penalty_matches_finite_differences():
  params = term_context()["critic_params"]
  z = np.asarray(normal(1, (7, 2)), np.float64)
  h = 1e-5
  grads = np.stack([(np_critic(params, z + h * e) - np_critic(params, z - h * e)) / (2 * h) for e in np.eye(2)], 1)
  reference = np.mean((np.linalg.norm(grads, axis=1) - 1) ** 2)
  gradient_penalty, critic_loss = jax.jit(losses.gradient_penalty), jax.jit(losses.critic_loss)
  np.testing.assert_allclose(gradient_penalty(params, jnp.asarray(z, jnp.float32)), reference, rtol=1e-4)
  # critic_loss = logistic loss + gp_weight * penalty at the interpolates.
  z_q, z_p, key = jnp.asarray(z, jnp.float32), jnp.asarray(z[::-1] + 1.0, jnp.float32), jax.random.key(2)
  logistic = np.mean(np.logaddexp(0, -np_critic(params, z_p))) + np.mean(np.logaddexp(0, np_critic(params, z_q)))
  np.testing.assert_allclose(critic_loss(params, z_q, z_p, key, 0.0), logistic, rtol=1e-5)
  penalty = gradient_penalty(params, losses.interpolate(key, z_q, z_p))
  np.testing.assert_allclose(critic_loss(params, z_q, z_p, key, 10.0), logistic + 10 * penalty, rtol=1e-5)


def test_critic_loss_decreases_with_sgd_on_separable_samples():
  z_q = normal(0, (64, 2)) * 0.3 - 2.0
  z_p = normal(1, (64, 2)) * 0.3 + 2.0
  params = term_context()["critic_params"]

  @jax.jit
  def step(params, key):
    value, grads = jax.value_and_grad(losses.critic_loss)(params, z_q, z_p, key)
    return jax.tree.map(lambda p, g: p - 0.05 * g, params, grads), value

  values = []
  for i in range(30):
    params, value = step(params, jax.random.key(100 + i))
    values.append(float(value))
  assert values[-1] < 0.5 * values[0], values
  # The trained critic separates the samples, so the encoder side is now penalised.
  assert losses.adversarial({"z": z_q}, {}, {"critic_params": params}) > math.log(2)


def test_critic_term_declares_its_state_and_one_adam_step_on_the_critic_loss():
  options = {"prior": "bimodal", "m": 1.0, "s": 0.5, "gp_weight": 3.0, "units": (1,)}
  term = losses.critic_term(options, latent_dim=2, learning_rate=0.01)
  key, step_key = jax.random.key(4), jax.random.key(5)
  state = jax.jit(term.init)(key)
  assert set(state) == {"critic", "critic_opt"} and term.outputs == ("z",)
  assert [layer["w"].shape for layer in state["critic"]] == [(1, 64), (64, 64), (64, 1)]  # sized by the units
  assert term.context(state)["critic_params"] is state["critic"]
  z = normal(3, (16, 2))
  new, metrics = jax.jit(term.update)(state, {"z": z}, step_key)

  @jax.jit
  def by_hand(critic, z, step_key):
    # The critic's keys from the step key, prior samples of Q(1, 0.5), one Adam step at lr 0.01.
    critic_key, prior_key = jax.random.split(jax.random.fold_in(step_key, 1))
    z_p = losses.sample_prior(prior_key, (16, 1), "bimodal", 1.0, 0.5)
    value, grads = jax.value_and_grad(losses.critic_loss)(critic, z[:, 1:], z_p, critic_key, 3.0)
    adam = optax.adam(0.01)
    updates, _ = adam.update(grads, adam.init(critic), critic)
    return value, optax.apply_updates(critic, updates)

  value, expected = by_hand(state["critic"], z, step_key)
  np.testing.assert_allclose(metrics["critic_loss"], value, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(new["critic"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert losses.stateful_terms({"adversarial": 0.0}, {"adversarial": options}, 2, 0.01) == []  # weight 0: none
  assert len(losses.stateful_terms({"adversarial": 1.0, "kl": 1.0}, {"adversarial": options}, 2, 0.01)) == 1