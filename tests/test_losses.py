"""Tests for stargal_jax.losses against independent computations (numpy, scipy quadrature, Monte Carlo)."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy import integrate, stats

from stargal_jax import losses, registry

# (mu, sigma, m, s) grid: both signs of mu, sigma from tight to wider than the modes' gap, and prior shapes
# whose log-density has a sharp feature at z = 0 (2 m / s^2 up to 11).
GRID_MU = (-1.5, -0.4, 0.3, 1.2)
GRID_SIGMA = (0.05, 0.3, 1.0, 2.5)
GRID_PRIOR = ((1.0, 0.5), (2.0, 1.0), (0.5, 0.3))
GRID = [(mu, sg, m, s) for mu in GRID_MU for sg in GRID_SIGMA for m, s in GRID_PRIOR]


def np_logpdf(z, mean, sd):
  return -0.5 * ((z - mean) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def np_log_bimodal(z, m, s):
  return np.logaddexp(np_logpdf(z, -m, s), np_logpdf(z, m, s)) - np.log(2)


def np_gaussian_kl(mu, sigma, mean, sd):
  """KL(N(mu, sigma^2) || N(mean, sd^2)), the textbook closed form."""
  return np.log(sd / sigma) + (sigma**2 + (mu - mean) ** 2) / (2 * sd**2) - 0.5


def quad_kl_bimodal(mu, sigma, m, s):
  """integral q (log q - log Q) by adaptive quadrature, split at the kink-like feature at 0."""
  f = lambda z: np.exp(np_logpdf(z, mu, sigma)) * (np_logpdf(z, mu, sigma) - np_log_bimodal(z, m, s))
  lo, hi = mu - 12 * sigma, mu + 12 * sigma
  points = [0.0] if lo < 0.0 < hi else None
  return integrate.quad(f, lo, hi, points=points, limit=500, epsabs=1e-12, epsrel=1e-12)[0]


def quad_kl_gaussian(mu, sigma, mean, sd):
  """KL(N(mu, sigma^2) || N(mean, sd^2)) by adaptive quadrature."""
  f = lambda z: np.exp(np_logpdf(z, mu, sigma)) * (np_logpdf(z, mu, sigma) - np_logpdf(z, mean, sd))
  return integrate.quad(f, mu - 12 * sigma, mu + 12 * sigma, limit=200, epsabs=1e-12, epsrel=1e-12)[0]


# Elementwise KLs over a vector of (mu, log_sigma, m, s), compiled once per input length.
KL_BIMODAL = jax.jit(jax.vmap(losses.kl_to_bimodal))
KL_AUTHORS = jax.jit(jax.vmap(losses.kl_to_bimodal_authors))


def grid_kl(fn, grid):
  """fn (vectorised over points) at each (mu, sigma, m, s) of grid."""
  mu, sigma, m, s = (jnp.asarray(a, jnp.float32) for a in np.array(grid).T)
  return np.asarray(fn(mu, jnp.log(sigma), m, s))


def per_point(name, grid):
  """A term's value at each (mu, sigma, m, s) point, one unit and one example per point (one compilation)."""
  term = losses.LOSS_TERMS[name]
  fn = lambda mu, ls, m, s: term({"mu": mu[None, None], "log_sigma": ls[None, None]}, {}, {}, m=m, s=s)
  return grid_kl(jax.jit(jax.vmap(fn)), grid)


def normal(seed, shape):
  # Inputs come from numpy: eager jax.random would compile a sampler for every new shape.
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def vae_outputs(seed, batch=8, latent=2):
  rng = np.random.default_rng(seed)
  mu = rng.standard_normal((batch, latent))
  log_sigma = rng.uniform(-2.0, 0.5, (batch, latent))
  z = mu + np.exp(log_sigma) * rng.standard_normal((batch, latent))
  recon = rng.standard_normal((batch, 4, 4, 5))
  return {k: jnp.asarray(v, jnp.float32) for k, v in dict(mu=mu, log_sigma=log_sigma, z=z, recon=recon).items()}


init_critic = jax.jit(losses.init_critic, static_argnums=(1, 2))  # One compilation per architecture.


def term_context(latent=2):
  return {"key": jax.random.key(7), "critic_params": init_critic(jax.random.key(1), latent, (16, 16))}


# ---------------------------------------------------------------------------------------------- KL family


def test_dkl_matches_monte_carlo_over_grid():
  """Exact KL vs Monte Carlo with 1e6 samples per point, 1e-3 absolute.

  Estimator: KL = KL(q || N(m, s^2)) (closed form) + E_q[log N(z; m, s^2) - log Q(z)]. The expectation is
  by Monte Carlo, log Q by logaddexp of the two modes, with relu(-2 m z / s^2) as a control variate
  (its Gaussian mean is known): plain Monte Carlo would have standard errors up to 0.02 here.
  """
  rng = np.random.default_rng(0)
  eps = rng.standard_normal(1_000_000)
  exact = grid_kl(KL_BIMODAL, GRID)
  for (mu, sigma, m, s), value in zip(GRID, exact):
    z = mu + sigma * eps
    c = 2 * m / s**2
    relu_mean = c * (sigma * stats.norm.pdf(mu / sigma) - mu * stats.norm.cdf(-mu / sigma))
    log_upper_mode = np_logpdf(z, m, s)
    log_prior = np.logaddexp(np_logpdf(z, -m, s), log_upper_mode) - np.log(2)
    sample = log_upper_mode - log_prior + np.maximum(-c * z, 0.0) - relu_mean
    mc = np_gaussian_kl(mu, sigma, m, s) + sample.mean()
    standard_error = sample.std() / np.sqrt(z.size)
    assert standard_error < 2.5e-4, (mu, sigma, m, s, standard_error)
    assert abs(value - mc) < 1e-3, (mu, sigma, m, s, value, mc)


def test_dkl_matches_adaptive_quadrature_and_is_symmetric():
  exact = grid_kl(KL_BIMODAL, GRID)
  reference = np.array([quad_kl_bimodal(*point) for point in GRID])
  np.testing.assert_allclose(exact, reference, rtol=1e-5, atol=2e-5)
  mirrored = grid_kl(KL_BIMODAL, [(-mu, sigma, m, s) for mu, sigma, m, s in GRID])
  np.testing.assert_allclose(mirrored, exact, rtol=1e-5, atol=1e-6)
  # m = 0: Q is N(0, s^2). Put in place of a grid point, so as not to compile another length.
  at_zero = grid_kl(KL_BIMODAL, [(0.7, 0.4, 0.0, 0.8)] + GRID[1:])[0]
  np.testing.assert_allclose(at_zero, np_gaussian_kl(0.7, 0.4, 0.0, 0.8), rtol=1e-5)


def test_dkl_gradient_matches_finite_differences_of_quadrature():
  # The integration range moves with mu and sigma: check the gradient, not only the value.
  points = [(-0.4, 1.0, 1.0, 0.5), (0.3, 2.5, 0.5, 0.3), (1.2, 0.05, 1.0, 0.5), (0.0, 0.3, 2.0, 1.0)]
  grad_fn = jax.jit(jax.vmap(jax.grad(losses.kl_to_bimodal, argnums=(0, 1))))
  d_mus, d_log_sigmas = grid_kl(grad_fn, points)
  h = 1e-4
  for (mu, sigma, m, s), d_mu, d_log_sigma in zip(points, d_mus, d_log_sigmas):
    fd_mu = (quad_kl_bimodal(mu + h, sigma, m, s) - quad_kl_bimodal(mu - h, sigma, m, s)) / (2 * h)
    fd_ls = (quad_kl_bimodal(mu, sigma * np.exp(h), m, s) - quad_kl_bimodal(mu, sigma * np.exp(-h), m, s)) / (2 * h)
    np.testing.assert_allclose([d_mu, d_log_sigma], [fd_mu, fd_ls], rtol=1e-3, atol=1e-3)


def test_dkl_authors_reproduces_published_error():
  points = [(-1.0, 0.2, 1.0, 0.5), (1.0, 0.2, 1.0, 0.5)]
  authors, exact = grid_kl(KL_AUTHORS, points), grid_kl(KL_BIMODAL, points + GRID[2:])[:2]
  assert abs(authors[0] - (-10.9)) < 0.05  # The published value at mu = -1...
  np.testing.assert_allclose(exact, 1.19, atol=0.005)  # ...where the true KL is 1.19,
  np.testing.assert_allclose(exact[0], quad_kl_bimodal(-1.0, 0.2, 1.0, 0.5), atol=1e-5)
  assert authors[0] < 0  # a KL cannot be negative,
  assert abs(authors[0] - authors[1]) > 10  # and the formula is not symmetric in mu,
  assert abs(authors[1] - exact[1]) < 0.01  # though on the mu > 0 side it is close.
  # The registered term is the same formula summed over units.
  outputs = {"mu": jnp.array([[-1.0, 1.0]]), "log_sigma": jnp.log(jnp.array([[0.2, 0.2]]))}
  np.testing.assert_allclose(losses.dkl_authors(outputs, {}, {}, m=1.0, s=0.5), authors.sum(), rtol=1e-6)


def test_dkl_term_sums_units_and_averages_batch():
  outputs = vae_outputs(0, batch=5, latent=3)
  mu, sigma = np.asarray(outputs["mu"], np.float64), np.exp(np.asarray(outputs["log_sigma"], np.float64))
  reference = np.mean([sum(quad_kl_bimodal(mu[b, u], sigma[b, u], 1.5, 0.7) for u in range(3)) for b in range(5)])
  value = jax.jit(functools.partial(losses.dkl, m=1.5, s=0.7))(outputs, {}, {})
  np.testing.assert_allclose(value, reference, rtol=1e-5)


def test_kl_matches_closed_form_and_monte_carlo():
  outputs = vae_outputs(1, batch=6, latent=3)
  mu, sigma = np.asarray(outputs["mu"], np.float64), np.exp(np.asarray(outputs["log_sigma"], np.float64))
  closed = np.mean(np.sum(np_gaussian_kl(mu, sigma, 0.0, 1.0), axis=1))
  np.testing.assert_allclose(losses.kl(outputs, {}, {}), closed, rtol=1e-5)
  eps = np.random.default_rng(1).standard_normal(1_000_000)
  for mu_i, sigma_i in [(0.5, 0.3), (-1.2, 1.4)]:
    z = mu_i + sigma_i * eps
    mc = np.mean(np_logpdf(z, mu_i, sigma_i) - np_logpdf(z, 0.0, 1.0))
    value = losses.kl({"mu": jnp.array([[mu_i]]), "log_sigma": jnp.log(jnp.array([[sigma_i]]))}, {}, {})
    np.testing.assert_allclose(value, mc, atol=5e-3)


def test_sc_is_mean_of_mode_kls_and_bounds_exact_kl():
  bound, exact = per_point("sc", GRID), per_point("dkl", GRID)
  mode_kls = np.array([[quad_kl_gaussian(mu, sigma, mean, s) for mean in (-m, m)] for mu, sigma, m, s in GRID])
  np.testing.assert_allclose(bound, mode_kls.mean(axis=1), rtol=1e-5, atol=1e-5)
  assert np.all(bound >= exact - 1e-5)  # Jensen: the log of a mean is at least the mean of the logs.
  assert np.any(bound > exact + 0.1)  # ...and the bound is loose where q sits on one mode.


# ---------------------------------------------------------------------------------------------- W-family


def test_pw_l2_distance_matches_numerical_integration():
  for mu, sigma, m, s in [(-1.0, 0.2, 1.0, 0.5), (0.3, 1.0, 1.5, 1.0), (2.0, 0.7, 2.0, 1.0), (0.0, 0.1, 0.0, 1.0)]:
    q = lambda z: np.exp(np_logpdf(z, mu, sigma))
    p = lambda z: np.exp(np_log_bimodal(z, m, s))
    reference = integrate.quad(lambda z: (q(z) - p(z)) ** 2, -np.inf, np.inf, points=None, limit=500)[0]
    # quad on the infinite line can miss a narrow peak: integrate over a covering range too.
    lo, hi = min(mu - 12 * sigma, -m - 12 * s), max(mu + 12 * sigma, m + 12 * s)
    covering = integrate.quad(lambda z: (q(z) - p(z)) ** 2, lo, hi, points=[mu, -m, m], limit=500)[0]
    closed = float(losses.l2_density_distance(jnp.float32(mu), jnp.float32(sigma), m, s))
    np.testing.assert_allclose(closed, covering, rtol=1e-5)
    assert abs(reference - covering) < 1e-3 * max(1.0, covering)
    outputs = {"mu": jnp.array([[mu]]), "log_sigma": jnp.log(jnp.array([[sigma]]))}
    np.testing.assert_allclose(losses.pw(outputs, {}, {}, m=m, s=s, mu_weight=10.0, l2_weight=3.0),
                               10.0 * mu**2 + 3.0 * covering, rtol=1e-5)


def test_aw_star_matches_quantile_w2_and_aw_formula():
  for mu, sigma, m, s in [(-0.7, 0.2, 1.0, 0.5), (1.6, 1.3, 1.0, 0.5), (0.2, 0.05, 2.0, 1.0)]:
    outputs = {"mu": jnp.array([[mu]]), "log_sigma": jnp.log(jnp.array([[sigma]]))}
    value = float(losses.aw_star(outputs, {}, {}, m=m, s=s))
    np.testing.assert_allclose(value, (abs(mu) - m) ** 2 + (sigma - s) ** 2, rtol=1e-5)
    nearest = math.copysign(m, mu)
    quantile_gap = lambda t: (stats.norm.ppf(t, mu, sigma) - stats.norm.ppf(t, nearest, s)) ** 2
    w2_squared = integrate.quad(quantile_gap, 0.0, 1.0, limit=200)[0]
    np.testing.assert_allclose(value, w2_squared, rtol=1e-4)
    np.testing.assert_allclose(losses.aw(outputs, {}, {}), -0.5 * mu**2 + abs(1 - sigma**2), rtol=1e-5)


def test_pw_star_is_sorted_difference_and_converges_to_gaussian_w2():
  z = normal(3, (16, 2)) * jnp.array([0.5, 2.0]) + jnp.array([1.0, -0.3])
  key = jax.random.key(4)
  value = losses.pw_star({"z": z}, {}, {"key": key}, m=1.2, s=0.3)
  prior_z = np.asarray(losses.sample_prior(key, z.shape, "bimodal", 1.2, 0.3))
  z_np = np.asarray(z)
  reference = sum(np.mean((np.sort(z_np[:, u]) - np.sort(prior_z[:, u])) ** 2) for u in range(2))
  np.testing.assert_allclose(value, reference, rtol=1e-5)
  # Large samples: approaches the closed-form W2^2 between N(a, b^2) and N(0, 1), (a^2 + (b - 1)^2).
  a, b = 0.8, 1.7
  large = a + b * normal(5, (200_000, 1))
  value = losses.pw_star({"z": large}, {}, {"key": jax.random.key(6)}, prior="normal")
  np.testing.assert_allclose(value, a**2 + (b - 1) ** 2, rtol=0.02)


def test_sample_prior_moments():
  z = np.asarray(losses.sample_prior(jax.random.key(0), (200_000,), "bimodal", 1.5, 0.4))
  assert abs(np.mean(z > 0) - 0.5) < 0.005
  np.testing.assert_allclose([z.mean(), z.var(), np.abs(z).mean()], [0.0, 1.5**2 + 0.4**2, 1.5], atol=0.02)
  n = np.asarray(losses.sample_prior(jax.random.key(1), (200_000,), "normal"))
  np.testing.assert_allclose([n.mean(), n.var()], [0.0, 1.0], atol=0.02)
  with pytest.raises(ValueError, match="bimodal"):
    losses.sample_prior(jax.random.key(0), (3,), "laplace")


# ---------------------------------------------------------------------------------------------- MMD


def test_mmd_matches_double_loop():
  z_q = np.asarray(normal(0, (6, 2)))
  key = jax.random.key(1)
  value = losses.mmd({"z": jnp.asarray(z_q)}, {}, {"key": key}, m=1.0, s=0.5)
  z_p = np.asarray(losses.sample_prior(key, (6, 2), "bimodal", 1.0, 0.5), np.float64)
  base = 2 * 2 * (1.0**2 + 0.5**2)
  kernel = lambda x, y: sum(base * c / (base * c + np.sum((x - y) ** 2)) for c in losses.MMD_SCALES)
  n = 6
  within = sum(kernel(z_q[i], z_q[j]) + kernel(z_p[i], z_p[j]) for i in range(n) for j in range(n) if i != j)
  between = sum(kernel(z_q[i], z_p[j]) for i in range(n) for j in range(n))
  np.testing.assert_allclose(value, within / (n * (n - 1)) - 2 * between / n**2, rtol=1e-5, atol=1e-6)


def test_mmd_is_unbiased_zero_on_prior_and_positive_when_shifted():
  keys = jax.random.split(jax.random.key(2), 40)

  def estimates(key, shift):
    z = losses.sample_prior(jax.random.fold_in(key, 1), (64, 2), "bimodal", 1.0, 0.5) + shift
    return losses.mmd({"z": z}, {}, {"key": key}, m=1.0, s=0.5)

  both = jax.jit(jax.vmap(lambda k: (estimates(k, 0.0), estimates(k, 1.0))))
  on_prior, shifted = (np.asarray(a) for a in both(keys))
  standard_error = on_prior.std() / np.sqrt(len(keys))
  assert abs(on_prior.mean()) < 4 * standard_error
  assert shifted.mean() > 8 * on_prior.std()
  assert np.all(shifted > on_prior.max())


# ---------------------------------------------------------------------------------------------- adversarial


def np_critic(params, z):
  """Independent float64 numpy forward pass of the critic MLP (SiLU hidden units)."""
  h = np.asarray(z, np.float64)
  for i, layer in enumerate(params):
    h = h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
    if i < len(params) - 1:
      h = h / (1 + np.exp(-h))
  return h[:, 0]


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
  state = term.init(key)
  assert set(state) == {"critic", "critic_opt"} and term.outputs == ("z",)
  expected_critic = losses.init_critic(jax.random.fold_in(key, 10**6), 1)  # sized by the selected units
  np.testing.assert_array_equal(state["critic"][0]["w"], expected_critic[0]["w"])
  assert term.context(state)["critic_params"] is state["critic"]
  z = normal(3, (16, 2))
  new, metrics = term.update(state, {"z": z}, step_key)
  # By hand: the critic's keys from the step key, prior samples of Q(1, 0.5), one Adam step at lr 0.01.
  critic_key, prior_key = jax.random.split(jax.random.fold_in(step_key, 1))
  z_p = losses.sample_prior(prior_key, (16, 1), "bimodal", 1.0, 0.5)
  value, grads = jax.value_and_grad(losses.critic_loss)(state["critic"], z[:, 1:], z_p, critic_key, gp_weight=3.0)
  adam = optax.adam(0.01)
  updates, _ = adam.update(grads, adam.init(state["critic"]), state["critic"])
  expected = optax.apply_updates(state["critic"], updates)
  np.testing.assert_allclose(metrics["critic_loss"], value, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(new["critic"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert losses.stateful_terms({"adversarial": 0.0}, {"adversarial": options}, 2, 0.01) == []  # weight 0: none
  assert len(losses.stateful_terms({"adversarial": 1.0, "kl": 1.0}, {"adversarial": options}, 2, 0.01)) == 1


# ---------------------------------------------------------------------------------------------- reconstruction


def test_recon_terms_match_numpy():
  outputs = vae_outputs(0, batch=3)
  x = normal(1, outputs["recon"].shape)
  diff = np.asarray(outputs["recon"] - x, np.float64)
  np.testing.assert_allclose(losses.recon_mse(outputs, {"x": x}, {}), (diff**2).sum((1, 2, 3)).mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.recon_mse(outputs, {"x": x}, {}, reduction="mean"), (diff**2).mean(), rtol=1e-5)
  nll = -stats.norm.logpdf(np.asarray(x), np.asarray(outputs["recon"]), 0.3).sum((1, 2, 3)).mean()
  np.testing.assert_allclose(losses.recon_nll(outputs, {"x": x}, {}, sigma=0.3), nll, rtol=1e-5)
  per_pixel = jnp.linspace(0.1, 2.0, x[0].size).reshape(x.shape[1:])
  nll = -stats.norm.logpdf(np.asarray(x), np.asarray(outputs["recon"]), np.asarray(per_pixel)).sum((1, 2, 3)).mean()
  np.testing.assert_allclose(losses.recon_nll(outputs, {"x": x, "sigma": per_pixel}, {}, sigma=0.3), nll, rtol=1e-5)
  with pytest.raises(ValueError, match="sum"):
    losses.recon_mse(outputs, {"x": x}, {}, reduction="median")


# ---------------------------------------------------------------------------------------------- every term

LATENT_TERMS = sorted(set(losses.LOSS_TERMS) - {"recon_mse", "recon_nll"})


@pytest.mark.parametrize("name", LATENT_TERMS)
def test_units_selection_ignores_other_units(name):
  outputs = vae_outputs(0)
  context = term_context(latent=1)
  term = jax.jit(functools.partial(losses.LOSS_TERMS[name], units=(0,)))
  base = term(outputs, {}, context)
  moved_unit_1 = {k: v.at[:, 1].add(0.7) if k != "recon" else v for k, v in outputs.items()}
  moved_unit_0 = {k: v.at[:, 0].add(0.7) if k != "recon" else v for k, v in outputs.items()}
  np.testing.assert_array_equal(term(moved_unit_1, {}, context), base)
  assert abs(float(term(moved_unit_0, {}, context)) - float(base)) > 1e-4
  with pytest.raises(ValueError, match="units"):
    losses.LOSS_TERMS[name](outputs, {}, context, units=(2,))


@pytest.mark.parametrize("name", sorted(losses.LOSS_TERMS))
def test_jit_matches_eager(name):
  outputs = vae_outputs(0)
  batch = {"x": normal(2, outputs["recon"].shape)}
  context = term_context()
  term = losses.LOSS_TERMS[name]
  eager = term(outputs, batch, context)
  jitted = jax.jit(term)(outputs, batch, context)
  assert eager.shape == ()
  np.testing.assert_allclose(jitted, eager, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(losses.LOSS_TERMS))
def test_gradients_finite_including_small_sigma(name):
  outputs = vae_outputs(0, batch=6)
  outputs["log_sigma"] = outputs["log_sigma"].at[:3, 0].set(jnp.array([-12.0, -6.0, 1.5]))
  batch = {"x": normal(2, outputs["recon"].shape)}
  context = term_context()
  grads = jax.jit(jax.grad(losses.LOSS_TERMS[name]))(outputs, batch, context)
  for key, grad in grads.items():
    assert np.all(np.isfinite(np.asarray(grad))), (name, key)
  assert any(np.any(np.asarray(g) != 0) for g in grads.values())


def test_vae_only_term_on_ae_outputs_fails_clearly():
  with pytest.raises(KeyError, match="mu"):
    losses.kl({"z": jnp.zeros((2, 2)), "recon": jnp.zeros((2, 3))}, {}, {})


# ---------------------------------------------------------------------------------------------- combination


def test_registry_and_option_validation_errors_list_valid_names():
  assert set(losses.LOSS_TERMS) == {"recon_mse", "recon_nll", "kl", "sc", "dkl", "dkl_authors", "aw", "aw_star",
                                    "pw", "pw_star", "mmd", "adversarial"}
  with pytest.raises(registry.UnknownName, match="dkl_authors"):
    registry.lookup(losses.LOSS_TERMS, "kll", "loss term")
  with pytest.raises(ValueError, match="valid.*recon_mse"):
    losses.make_loss_fn({"recon_mse": 1.0, "kll": 1.0}, {})
  with pytest.raises(ValueError, match="valid.*recon_mse"):
    losses.make_loss_fn({"recon_mse": 1.0}, {"kll": {}})
  with pytest.raises(ValueError, match=r"'mm'; valid: \['m', 'order', 's', 'units'\]"):
    losses.make_loss_fn({"dkl": 1.0}, {"dkl": {"mm": 1.0}})
  with pytest.raises(ValueError, match="option"):  # Options of a weight-0 term are still checked.
    losses.make_loss_fn({"dkl": 0.0}, {"dkl": {"order": 8, "sigma": 1.0}})


def test_make_loss_fn_combines_weights_and_skips_zero_weight_terms(monkeypatch):
  traces = {}

  def counting(name, term):
    @functools.wraps(term)  # Keeps the signature, so option validation still sees the real options.
    def wrapped(*args, **kwargs):
      traces[name] = traces.get(name, 0) + 1
      return term(*args, **kwargs)
    return wrapped

  for name, term in list(losses.LOSS_TERMS.items()):
    monkeypatch.setitem(losses.LOSS_TERMS, name, counting(name, term))
  weights = ml_collections.ConfigDict(dict(recon_mse=1.0, kl=0.0, dkl=0.5, mmd=2.0))
  options = ml_collections.ConfigDict(dict(dkl=dict(units=[0], m=1.0, s=0.5), kl=dict(units=(1,))))
  loss_fn = losses.make_loss_fn(weights, options)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def jitted(outputs, batch, context):
    return loss_fn(outputs, batch, context)

  context = {"key": jax.random.key(3)}
  for seed in range(3):  # Same shapes each time: one compilation.
    outputs = vae_outputs(seed)
    batch = {"x": normal(10 + seed, outputs["recon"].shape)}
    total, metrics = jitted(outputs, batch, context)
  assert traces == {"recon_mse": 1, "dkl": 1, "mmd": 1}
  assert set(metrics) == {"recon_mse", "dkl", "mmd", "total"}

  @jax.jit
  def separately(outputs, batch):
    mmd_key = jax.random.fold_in(context["key"], list(losses.LOSS_TERMS).index("mmd"))
    return (losses.recon_mse(outputs, batch, {}), losses.dkl(outputs, batch, {}, units=(0,), m=1.0, s=0.5),
            losses.mmd(outputs, batch, {"key": mmd_key}))

  np.testing.assert_allclose([metrics[name] for name in ("recon_mse", "dkl", "mmd")], separately(outputs, batch),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(total, metrics["recon_mse"] + 0.5 * metrics["dkl"] + 2.0 * metrics["mmd"], rtol=1e-6)


@pytest.mark.parametrize("kl_fn", [losses.kl_to_bimodal, losses.kl_to_bimodal_authors])
def test_bimodal_kl_gradients_stay_finite_for_collapsed_or_huge_sigma(kl_fn):
  # An encoder can drive log sigma far below -29, where sigma^3 underflows float32: found when the authors'
  # DKL config diverged at step 7 of a full run with NaN gradients.
  mu = jnp.array([1.0, 0.5, -1.0, 0.0, 1.0, 3.0], jnp.float32)
  log_sigma = jnp.array([-50.0, -90.0, -50.0, -60.0, -20.0, 40.0], jnp.float32)
  f = lambda a, b: jnp.sum(kl_fn(a, b, jnp.float32(1.0), jnp.float32(0.5)))
  grad_mu, grad_log_sigma = jax.grad(f, argnums=(0, 1))(mu, log_sigma)
  assert np.all(np.isfinite(grad_mu)) and np.all(np.isfinite(grad_log_sigma))
  # Far below sigma = 1e-9 the KL is -log sigma + const: d/d(log sigma) = -1.
  np.testing.assert_allclose(grad_log_sigma[:5], -1.0, atol=1e-5)
