"""Checksums of orbax checkpoint steps: the sha256 of every file of a finalised step directory, recorded beside
them (`CHECKSUM_FILE`) and verified before the step is restored (`stargal_jax.train`). Plain files, no jax."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHECKSUM_FILE = "stargal_checksums.json"  # in each step directory: sha256 of every other file in it


def step_dirs(ckpt_dir: str | Path) -> dict[int, Path]:
  """step -> its finalised directory (orbax names them by the step; temporary ones carry a suffix)."""
  ckpt_dir = Path(ckpt_dir)
  if not ckpt_dir.is_dir():
    return {}
  return {int(p.name): p for p in ckpt_dir.iterdir() if p.name.isdigit() and p.is_dir()}


def file_digests(step_dir: str | Path) -> dict[str, str]:
  """sha256 of every file under a step directory (its checksum file excepted), by relative path."""
  step_dir = Path(step_dir)
  digests = {}
  for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    digests[path.relative_to(step_dir).as_posix()] = digest.hexdigest()
  return digests


def write_checksums(step_dir: str | Path) -> None:
  """Records the digests of a finalised step (atomically: a half-written checksum file never exists)."""
  step_dir = Path(step_dir)
  partial = step_dir / f".{CHECKSUM_FILE}.partial"
  partial.write_text(json.dumps({"algorithm": "sha256", "files": file_digests(step_dir)}, indent=1))
  os.replace(partial, step_dir / CHECKSUM_FILE)


def checksum_problem(step_dir: str | Path) -> str | None:
  """What is wrong with a step directory against its checksums, None when intact ('no checksums' when the
  step has none)."""
  step_dir = Path(step_dir)
  try:
    recorded = json.loads((step_dir / CHECKSUM_FILE).read_text())["files"]
  except FileNotFoundError:
    return "no checksums"
  except (OSError, ValueError, KeyError, TypeError) as error:
    return f"unreadable {CHECKSUM_FILE} ({error})"
  found = file_digests(step_dir)
  missing = sorted(set(recorded) - set(found))
  if missing:
    return f"missing {missing[0]}" + (f" and {len(missing) - 1} more files" if len(missing) > 1 else "")
  changed = sorted(name for name in recorded if found[name] != recorded[name])
  if changed:
    return f"{changed[0]} does not match its checksum" + (f" ({len(changed)} files)" if len(changed) > 1 else "")
  return None
