"""`run(config, workdir)`: the whole job behind `launch.py`, importable from notebooks and tests.

`RUNS` is the one registry of runs: `config.pipeline` -> a `Run` whose `job(config, workdir) -> metrics` does
everything. The classification runs are one per entry of `classify.pipelines.PIPELINES` (which says what each
pipeline trains, encodes with and vmaps over seeds); the segmentation wing adds its two jobs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from stargal_jax import distributed, registry
from stargal_jax.classify import job as classify_job
from stargal_jax.classify import pipelines
from stargal_jax.segment import jobs as segment_jobs


@dataclasses.dataclass(frozen=True)
class Run:
  job: Callable[..., dict]  # (config, workdir: Path) -> the metrics written to workdir/metrics.json
  multiprocess: bool  # runs as one program over several processes (launch.py --multihost)
  summary: str


RUNS: dict[str, Run] = {
    **{name: Run(classify_job.run, multiprocess=True, summary=f"classification: {name} ({', '.join(p.stages)})")
       for name, p in pipelines.PIPELINES.items()},
    "segmentation": Run(segment_jobs.run_segmentation, multiprocess=False,
                        summary="hypercolumn k-means segmentation, scored against truth beside SEP"),
    "seg_cvae": Run(segment_jobs.run_seg_cvae, multiprocess=False,
                    summary="cvae classification with and without the segmentation's neighbours masked"),
}


def run(config, workdir: str | Path) -> dict:
  """Runs `RUNS[config.pipeline]` into `workdir` (its config saved as workdir/config.json by process 0)."""
  entry = registry.lookup(RUNS, config.pipeline, "pipeline")  # before any work
  if distributed.is_multiprocess() and not entry.multiprocess:
    raise NotImplementedError(f"{config.pipeline!r} runs in one process only; drop --multihost.")
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if distributed.is_writer():
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  return entry.job(config, workdir)
