"""losses: every registered term (unit selection, jit against eager, finite gradients), the registry's errors,
and make_loss_fn's weighting."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from stargal_jax import losses, registry
from loss_helpers import normal, term_context, vae_outputs


LATENT_TERMS = sorted(set(losses.LOSS_TERMS) - {"recon_mse", "recon_nll", "recon_window", "bce"})


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
  outputs = dict(vae_outputs(0), logit=normal(3, (8,)))
  batch = {"x": normal(2, outputs["recon"].shape), "label": (normal(4, (8,)) > 0).astype(jnp.float32)}
  context = term_context()
  term = losses.LOSS_TERMS[name]
  eager = term(outputs, batch, context)
  jitted = jax.jit(term)(outputs, batch, context)
  assert eager.shape == ()
  np.testing.assert_allclose(jitted, eager, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(losses.LOSS_TERMS))
def test_gradients_finite_including_small_sigma(name):
  outputs = dict(vae_outputs(0, batch=6), logit=normal(3, (6,)))
  outputs["log_sigma"] = outputs["log_sigma"].at[:3, 0].set(jnp.array([-12.0, -6.0, 1.5]))
  batch = {"x": normal(2, outputs["recon"].shape), "label": (normal(4, (6,)) > 0).astype(jnp.float32)}
  context = term_context()
  grads = jax.jit(jax.grad(losses.LOSS_TERMS[name]))(outputs, batch, context)
  for key, grad in grads.items():
    assert np.all(np.isfinite(np.asarray(grad))), (name, key)
  assert any(np.any(np.asarray(g) != 0) for g in grads.values())


def test_registry_and_option_validation_errors_list_valid_names():
  assert set(losses.LOSS_TERMS) == {"recon_mse", "recon_nll", "recon_window", "kl", "sc", "dkl", "dkl_authors", "aw",
                                    "aw_star", "pw", "pw_star", "mmd", "adversarial", "bce"}
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
