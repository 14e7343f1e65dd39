"""`lookup(registry, name, what)`: the one place a registry name is resolved, and the one error for a wrong one.

Registries are plain dicts (name -> thing). An unknown name raises `UnknownName`, a `KeyError` and a
`ValueError` at once (callers and tests written against either keep working), whose message names what was
looked up and lists the valid names: `unknown pipeline 'x'; valid: ['ae_vae', 'vae_aeloss', 'vae_manifold']`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping


class UnknownName(KeyError, ValueError):
  """A name that is not in its registry; the message lists the valid ones."""

  def __str__(self) -> str:  # KeyError would print the message in quotes
    return str(self.args[0]) if self.args else ""


def valid_names(names: Iterable[Any]) -> list:
  """The names sorted for an error message: numbers by value, then everything else by its text."""
  number = lambda n: isinstance(n, (int, float)) and not isinstance(n, bool)
  return sorted(names, key=lambda n: (0, n, "") if number(n) else (1, 0, str(n)))


def unknown(what: str, name: Any, valid: Iterable[Any]) -> UnknownName:
  """The error for `name`, not among `valid` (for choices that are not a dict: options, policies, words)."""
  return UnknownName(f"unknown {what} {name!r}; valid: {valid_names(valid)}")


def lookup(registry: Mapping[Any, Any], name: Any, what: str) -> Any:
  """registry[name], or `UnknownName` naming `what` and listing the valid names."""
  try:
    return registry[name]
  except (KeyError, TypeError):
    raise unknown(what, name, registry) from None


def check_choice(name: Any, valid: Iterable[Any], what: str) -> Any:
  """`name` itself when it is one of `valid`; else `UnknownName` listing them."""
  valid = tuple(valid)
  if name not in valid:
    raise unknown(what, name, valid)
  return name
