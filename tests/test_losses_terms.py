"""losses.terms against independent computations (numpy, scipy quadrature, Monte Carlo)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from stargal_jax import losses
from loss_helpers import (GRID, KL_AUTHORS, KL_BIMODAL, grid_kl, normal, np_gaussian_kl, np_log_bimodal,
                          np_logpdf, per_point, quad_kl_bimodal, quad_kl_gaussian, vae_outputs)


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


def test_recon_window_matches_numpy():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(3, 16, 12, 2)).astype(np.float32)
  recon = rng.normal(size=x.shape).astype(np.float32)
  yy, xx = np.mgrid[:16, :12]
  weight = np.exp(-((yy - 8) ** 2 + (xx - 6) ** 2) / (2 * 3.0 ** 2))
  weight /= weight.mean()
  expected = np.mean(np.sum((recon - x) ** 2 * weight[None, :, :, None], axis=(1, 2, 3)))
  got = losses.recon_window({"recon": jnp.asarray(recon)}, {"x": jnp.asarray(x)}, {}, sigma_px=3.0)
  assert float(got) == pytest.approx(expected, rel=1e-5)
  # a flat error costs what recon_mse charges (mean weight 1)
  flat = {"recon": jnp.asarray(x + 0.5)}
  assert float(losses.recon_window(flat, {"x": jnp.asarray(x)}, {}, sigma_px=3.0)) == pytest.approx(
      float(losses.recon_mse(flat, {"x": jnp.asarray(x)}, {})), rel=1e-5)
  with pytest.raises(ValueError, match="recon_window needs images"):
    losses.recon_window({"recon": jnp.zeros((2, 30))}, {"x": jnp.zeros((2, 30))}, {})


def test_bce_matches_hand_formula_with_smoothing_and_weights():
  rng = np.random.default_rng(5)
  logit = rng.normal(0, 3, 16)
  label = (rng.random(16) > 0.4).astype(np.float64)
  weight = rng.uniform(0.1, 2.0, 16)
  p = 1.0 / (1.0 + np.exp(-logit))
  hand = -(label * np.log(p) + (1 - label) * np.log(1 - p))
  outputs = {"logit": jnp.asarray(logit, jnp.float32)}
  batch = {"label": jnp.asarray(label, jnp.float32)}
  np.testing.assert_allclose(losses.bce(outputs, batch, {}), hand.mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.bce(outputs, dict(batch, weight=jnp.asarray(weight, jnp.float32)), {}),
                             np.sum(weight * hand) / np.sum(weight), rtol=1e-5)
  y = label * 0.8 + 0.1  # label_smoothing 0.2
  smoothed = -(y * np.log(p) + (1 - y) * np.log(1 - p))
  np.testing.assert_allclose(losses.bce(outputs, batch, {}, label_smoothing=0.2), smoothed.mean(), rtol=1e-5)
  # Large logits stay finite (softplus form, no log of 0).
  extreme = losses.bce({"logit": jnp.array([80.0, -80.0])}, {"label": jnp.array([0.0, 1.0])}, {})
  np.testing.assert_allclose(extreme, 80.0, rtol=1e-6)
