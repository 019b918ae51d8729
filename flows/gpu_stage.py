"""One GPU stage (teacher training or a distillation hop) as its own flow, deployed to the GPU work pool.

The orchestrating flow (`flows.pipeline`) stays on a CPU worker and sends each GPU stage here with
`run_deployment`. The two machines share nothing but git and the DVC remote, and the run cache is the hand-off:

1. clone `repository` at `revision` into a scratch directory and write the orchestrator's `dvc.lock` into it
   (the hashes of everything upstream, which the orchestrator has pushed);
2. `dvc repro --single-item --pull <stage>`: pull the stage's dependencies, run it (multi-GPU stages launch
   `torchrun` in a fresh process, see `distill.launch`);
3. `dvc push --run-cache`: its outputs and its run-cache entry go to the remote.

The orchestrator then runs `dvc repro --single-item --pull <stage>` itself, which finds the run-cache entry
and checks the outputs out instead of recomputing them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow

from tasks.stages import run_command, run_stage
from tasks.storage import push_stage


def is_gpu_stage(stage: str) -> bool:
    """Stages that train a model: the teacher and every distillation hop (`distill@<i>`)."""
    return stage == "teacher" or stage.startswith("distill@")


@flow(name="distill-gpu-stage", log_prints=True)
def gpu_stage(stage: str, repository: str, revision: str, lock: str = "", remote: str | None = None,
              credentials_block: str | None = None, deadline_minutes: float = 120.0) -> dict:
    """Run `stage` of the project at `repository`@`revision` with the given `dvc.lock`, then push it."""
    if not is_gpu_stage(stage):
        raise ValueError(f"gpu_stage: {stage!r} is not a GPU stage (teacher or distill@<i>)")
    deadline = deadline_minutes * 60
    with tempfile.TemporaryDirectory(prefix="distill-gpu-") as scratch:
        workdir = Path(scratch) / "project"
        run_command(["git", "clone", "--quiet", repository, str(workdir)], scratch, 600, "clone", quiet=True)
        run_command(["git", "checkout", "--quiet", revision], workdir, 60, "checkout", quiet=True)
        if lock:
            (workdir / "dvc.lock").write_text(lock, encoding="utf-8")
        if remote:
            run_command(["dvc", "remote", "default", "--local", remote], workdir, 60, "remote", quiet=True)
        outcome = run_stage.with_options(task_run_name=stage)(stage, str(workdir), deadline, pull=True,
                                                                credentials_block=credentials_block)
        push_stage(stage, str(workdir), remote, credentials_block, deadline)
    return {"stage": stage, "revision": revision, "skipped": outcome["skipped"], "replayed": outcome["replayed"]}
