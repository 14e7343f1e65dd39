"""The notebooks run top to bottom in their smoke setting (STARGAL_NOTEBOOK_SMOKE=1) on CPU, and are stored clean.

Each runs in a fresh `python3` kernel of this interpreter, in a temporary copy of the parts of the checkout a
notebook reads (notebooks/, configs/, setup.cfg: the package itself is the installed one), with the data cache in
a temporary directory; any failing cell fails the test.
"""

import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from stargal_jax import paths

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"colab": REPO / "notebooks" / "colab_tpu.ipynb", "walkthrough": REPO / "notebooks" / "sdss_walkthrough.ipynb"}
CELL_TIMEOUT_S = 600
PROBE = "import sys\nprint(sys.prefix)"


def _working_copy(tmp_path: Path) -> Path:
  copy = tmp_path / "checkout"
  for name in ("notebooks", "configs"):
    shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
  shutil.copy2(REPO / "setup.cfg", copy / "setup.cfg")
  return copy


def _execute(name: str, tmp_path: Path, cache: str, monkeypatch) -> tuple[nbformat.NotebookNode, Path, float]:
  """Runs a copy of notebook `name` in its smoke setting; returns the executed notebook, the copy, the seconds."""
  copy = _working_copy(tmp_path)
  monkeypatch.setenv("STARGAL_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("STARGAL_CACHE", cache)
  monkeypatch.setenv("STARGAL_SHARED_DATA", str(paths.shared_data_dir()))  # the copy has no ../shared beside it
  monkeypatch.setenv("MPLBACKEND", "Agg")
  path = copy / "notebooks" / NOTEBOOKS[name].name
  notebook = nbformat.read(path, as_version=4)
  notebook.cells.insert(0, nbformat.v4.new_code_cell(PROBE))  # which interpreter runs the kernel
  client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                          resources={"metadata": {"path": str(path.parent)}})
  t0 = time.perf_counter()
  client.execute()
  seconds = time.perf_counter() - t0
  print(f"{name}: {seconds:.0f} s")
  kernel_prefix = "".join(o.get("text", "") for o in notebook.cells[0].outputs).strip()
  assert kernel_prefix == sys.prefix, f"the kernel ran {kernel_prefix}, not this environment ({sys.prefix})"
  return notebook, copy, seconds


def _images(notebook) -> int:
  return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.outputs)


def _markdown_outputs(notebook) -> str:
  return "\n".join(output["data"]["text/markdown"] for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs if "text/markdown" in output.get("data", {}))


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebooks_are_stored_valid_and_without_outputs(name):
  notebook = nbformat.read(NOTEBOOKS[name], as_version=nbformat.NO_CONVERT)
  assert notebook.nbformat == 4
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
  assert notebook.metadata.kernelspec.name == "python3"


@pytest.mark.slow  # runs a notebook end to end
def test_colab_notebook_runs_a_sharded_seed_study(smoke_cache, tmp_path, monkeypatch):
  notebook, copy, _ = _execute("colab", tmp_path, smoke_cache, monkeypatch)
  workdir = copy / "runs" / "colab_cvae_4seeds_smoke"
  assert (workdir / "metrics.json").is_file() and (workdir / "plots" / "seed_distribution.png").is_file()
  assert _images(notebook) == len(list((workdir / "plots").glob("*.png")))
  table = _markdown_outputs(notebook)
  assert all(f"\n| {s} | " in table for s in range(4)) and "mean +- std" in table and "consensus of the 4 seeds" in table


@pytest.mark.slow  # runs a notebook end to end
def test_sdss_walkthrough_runs_on_real_frames(sdss_frames_dir, smoke_cache, tmp_path, monkeypatch):
  notebook, copy, _ = _execute("walkthrough", tmp_path, smoke_cache, monkeypatch)
  figures = copy / "runs" / "sdss_walkthrough_smoke" / "figures"
  for figure in ("cutouts.png", "segmentation_real.png", "latents_real.png", "score_vs_extendedness.png"):
    assert (figures / figure).is_file(), figure
  assert _images(notebook) >= 10
  assert "called galaxies" in _markdown_outputs(notebook)
