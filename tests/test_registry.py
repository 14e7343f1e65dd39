"""registry: one error type for an unknown name, listing the valid names in a stable order."""

import pytest

from stargal_jax import registry


def test_lookup_returns_the_entry_or_fails_listing_the_valid_names():
  table = {"isomap": 1, "pca": 2, "gmm": 3}
  assert registry.lookup(table, "pca", "score method") == 2
  with pytest.raises(registry.UnknownName) as info:
    registry.lookup(table, "umap", "score method")
  assert str(info.value) == "unknown score method 'umap'; valid: ['gmm', 'isomap', 'pca']"
  # One type that both older conventions catch.
  assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
  with pytest.raises(registry.UnknownName, match=r"valid: \[4, 8\]"):
    registry.lookup({8: "square", 4: "cross"}, 6, "connectivity")  # numbers sorted as numbers
  with pytest.raises(registry.UnknownName):
    registry.lookup(table, ["unhashable"], "score method")


def test_check_choice_and_unknown():
  assert registry.check_choice("sum", ("sum", "mean"), "reduction") == "sum"
  with pytest.raises(ValueError, match=r"unknown reduction 'max'; valid: \['mean', 'sum'\]"):
    registry.check_choice("max", ("sum", "mean"), "reduction")
  error = registry.unknown("prior", "laplace", ["normal", "bimodal", 10])
  assert str(error) == "unknown prior 'laplace'; valid: [10, 'bimodal', 'normal']"
