"""JAX kernels of the model fits: Gaussian mixtures rendered at pixel centres, shapes, convolution with a PSF
mixture, the linear flux solution and a Levenberg-Marquardt loop (pure functions, jit- and vmap-able)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=8)
def radius_grid(height: int, width: int) -> np.ndarray:
  y, x = np.indices((height, width), dtype=np.float64)
  return np.hypot(y - height // 2, x - width // 2)


def box_coordinates(height: int, width: int, box: int) -> tuple[slice, slice, jnp.ndarray, jnp.ndarray]:
  top, left = height // 2 - box // 2, width // 2 - box // 2
  y, x = np.indices((box, box), dtype=np.float64)
  return (slice(top, top + box), slice(left, left + box),
          jnp.asarray((y + top - height // 2).ravel(), jnp.float32),
          jnp.asarray((x + left - width // 2).ravel(), jnp.float32))


def render_mixture(amplitudes, covariances, shift, yy, xx):
  """sum_k a_k N(shift, C_k) at pixel centres (yy, xx) (P,): (P,)."""
  a, b, c = covariances[:, 0, 0], covariances[:, 0, 1], covariances[:, 1, 1]
  det = a * c - b * b
  dy, dx = yy - shift[0], xx - shift[1]
  quadratic = (c[:, None] * dy ** 2 - 2 * b[:, None] * dy * dx + a[:, None] * dx ** 2) / det[:, None]
  norm = amplitudes / (2 * jnp.pi * jnp.sqrt(det))
  return jnp.sum(norm[:, None] * jnp.exp(-0.5 * quadratic), axis=0)


def shape_matrix(eta):
  """expm([[e1, e2], [e2, -e1]]): unit determinant, eigenvalues exp(+-|eta|), so axis ratio q = exp(-|eta|)."""
  norm = jnp.sqrt(eta[0] ** 2 + eta[1] ** 2 + 1e-12)
  scale = jnp.sinh(norm) / norm
  return (jnp.cosh(norm) * jnp.eye(2) + scale * jnp.array([[eta[0], eta[1]], [eta[1], -eta[0]]]))


def convolved_mixture(profile_amps, profile_vars, params, psf_amps, psf_covs):
  """Amplitudes (K J,) and covariances (K J, 2, 2) of a galaxy (params: dy, dx, log r_e, e1, e2) x PSF."""
  shape = jnp.exp(2 * params[2]) * shape_matrix(params[3:5])
  galaxy = profile_vars[:, None, None] * shape[None]
  covs = (galaxy[:, None] + psf_covs[None]).reshape(-1, 2, 2)
  amps = (profile_amps[:, None] * psf_amps[None]).reshape(-1)
  return amps, covs


def profiled_fit(template, data, weight):
  """Flux F = sum(w d t) / sum(w t^2) of a unit-flux template and the residual sqrt(w) (d - F t)."""
  norm = jnp.maximum(jnp.sum(weight * template ** 2), 1e-30)
  flux = jnp.sum(weight * data * template) / norm
  return flux, jnp.sqrt(weight) * (data - flux * template)


def levenberg_marquardt(residual_fn, params, n_steps: int, clip):
  """n_steps damped Gauss-Newton steps (Marquardt scaling); a step is kept only if chi^2 drops."""
  n = params.shape[0]
  basis = jnp.eye(n, dtype=params.dtype)

  def residual_and_jacobian(p):
    r = residual_fn(p)
    jac = jax.vmap(lambda v: jax.jvp(residual_fn, (p,), (v,))[1], out_axes=1)(basis)
    return r, jac

  def step(carry, _):
    p, damping, chi2 = carry
    r, jac = residual_and_jacobian(p)
    hessian = jac.T @ jac
    gradient = jac.T @ r
    damped = hessian + damping * (jnp.diag(jnp.diag(hessian)) + 1e-9 * jnp.eye(n))
    candidate = clip(p - jnp.linalg.solve(damped, gradient))
    candidate_chi2 = jnp.sum(residual_fn(candidate) ** 2)
    better = jnp.isfinite(candidate_chi2) & (candidate_chi2 < chi2)
    return (jnp.where(better, candidate, p), jnp.where(better, damping * 0.3, damping * 10.0),
            jnp.where(better, candidate_chi2, chi2)), None

  chi2 = jnp.sum(residual_fn(params) ** 2)
  (params, _, chi2), _ = jax.lax.scan(step, (params, jnp.asarray(1e-2, params.dtype), chi2), None,
                                      length=n_steps)
  return params, chi2
