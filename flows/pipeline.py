"""The distillation pipeline as a Prefect flow: prepare → teacher → each hop → evaluate → gate → promote.

Every stage runs through DVC (`tasks.stages.run_stage`), so DVC decides what is up to date and versions the
artifacts, while Prefect adds schedules, retries, deadlines, concurrency, and what a person reads afterwards:
a progress artifact while it runs, a table of metrics and a markdown report with the comparison and the plot.
A failing gate fails the flow with the gate's message and nothing is promoted. Promotion registers a version
of the `student` artifact declared in dvc.yaml and assigns it a stage with GTO (git tags, the DVC ecosystem's
model registry).

Artifacts move through the DVC remote (`.dvc/config`: a local directory by default, S3 through dvc-s3/s3fs):
with `push`, every stage's outputs and run cache are pushed as soon as it succeeds; with `pull`, stages already
computed elsewhere (CI, another machine) are restored from the remote's run cache instead of recomputed. With
`gpu_deployment`, the stages that train (teacher, each hop) run as `flows.gpu_stage` flow runs on the GPU work
pool while this flow stays on its CPU worker; the run cache carries their results back.

Runs on Prefect's ephemeral server by default, or on the server named by PREFECT_API_URL; deployments are in
prefect.yaml.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.deployments import run_deployment
from pydantic import BaseModel, Field, model_validator

from distill.config import load_params
from flows.gpu_stage import is_gpu_stage
from tasks.stages import WORKSPACE_LIMIT, StageFailed, exit_code, run_command, run_stage
from tasks.storage import push_stage


class PipelineRequest(BaseModel):
    """Parameters of a pipeline run (what a deployment or a person passes)."""

    workdir: str = Field(".", description="the project: dvc.yaml, params.yaml, a git + DVC repository")
    params_file: str = Field("params.yaml", description="validated before any stage runs")
    stage_deadline_minutes: float = Field(120.0, gt=0, description="a stage running longer is killed")
    promote: bool = Field(True, description="register and assign the student with GTO when the gates pass")
    promote_stage: str = Field("prod", description="GTO stage to assign on promotion")
    push: bool = Field(False, description="dvc push --run-cache after each stage")
    pull: bool = Field(False, description="dvc repro --pull: restore stages computed elsewhere from the run cache")
    remote: str | None = Field(None, description="DVC remote for push/pull (None: the default in .dvc/config)")
    credentials_block: str | None = Field(
        None, description="name of a Prefect Secret block with S3 credentials (JSON: AWS_ACCESS_KEY_ID, ...); "
                          "never the credentials themselves")
    gpu_deployment: str | None = Field(
        None, description="run teacher and distill stages as runs of this deployment, e.g. "
                          "'distill-gpu-stage/gpu' (needs push)")
    repository: str | None = Field(None, description="git URL the GPU worker clones (default: workdir)")

    @model_validator(mode="after")
    def _gpu_needs_push(self) -> PipelineRequest:
        if self.gpu_deployment and not self.push:
            raise ValueError("gpu_deployment needs push=True: the GPU worker gets its inputs from the DVC remote")
        return self


@task
def ensure_workspace_limit(slots: int = 1) -> None:
    """One stage at a time in a workspace (they share its files and DVC lock): a global concurrency limit."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(WORKSPACE_LIMIT)
        except Exception:  # ObjectNotFound: create it
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=WORKSPACE_LIMIT, limit=slots))


@task
def promote(workdir: str, stage: str) -> dict:
    """`gto register student` then `gto assign student --stage <stage>`: annotated git tags, nothing home-made."""
    out = run_command(["gto", "register", "student"], workdir, 120, "promote")
    version = next((w for w in out.split() if w.startswith("v") and w[1:2].isdigit()), None)
    run_command(["gto", "assign", "student", "--stage", stage], workdir, 120, "promote")
    return {"artifact": "student", "version": version, "stage": stage}


def _git(workdir: Path, *args: str) -> str:
    return run_command(["git", *args], workdir, 60, "git", quiet=True).strip()


def offload_stage(stage: str, request: PipelineRequest, workdir: Path, deadline: float) -> dict | None:
    """Run `stage` on the GPU pool unless it is up to date here; None when nothing had to run.

    The GPU worker clones the committed revision, so the files that define stages must be committed.
    """
    if exit_code(["dvc", "status", "--quiet", stage], workdir) == 0:  # 0: up to date, 1: changed
        return None
    dirty = _git(workdir, "status", "--porcelain", "--untracked-files=no", "--", "dvc.yaml", request.params_file,
                 "distill")
    if dirty:
        raise StageFailed(stage, 2, f"cannot send {stage} to the GPU pool: commit these first (the worker clones "
                                    f"the committed revision):\n{dirty}")
    lock = workdir / "dvc.lock"
    run = run_deployment(
        name=request.gpu_deployment, timeout=deadline, as_subflow=True,
        parameters={"stage": stage, "repository": request.repository or str(workdir),
                    "revision": _git(workdir, "rev-parse", "HEAD"),
                    "lock": lock.read_text(encoding="utf-8") if lock.exists() else "", "remote": request.remote,
                    "credentials_block": request.credentials_block,
                    "deadline_minutes": request.stage_deadline_minutes})
    if not run.state or not run.state.is_completed():
        raise StageFailed(stage, 1, f"GPU stage run {run.name} ended {run.state.type if run.state else 'unknown'}: "
                                    f"{run.state.message if run.state else ''}")
    return {"flow_run": str(run.id), "name": run.name}


def _how(outcome: dict, remote_run: dict | None) -> str:
    if remote_run:
        return f"gpu pool ({remote_run['name']})"
    return "replayed from run cache" if outcome.get("replayed") else "skipped" if outcome["skipped"] else "ran here"


def _report(workdir: Path, params, results: dict[str, dict], gate: dict | None) -> str:
    rows = ["| model | accuracy | perplexity | parameters | tokens/s | KL to teacher |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        kl = r.get("teacher_kl")
        rows.append(f"| {name} | {r['exact_match']:.3f} | {r['perplexity']:.3f} | {r['num_parameters']:,} | "
                    f"{r['tokens_per_second']:.0f} | {'-' if kl is None else f'{kl:.4f}'} |")
    lines = ["# Distillation run", "", f"Chain: {' → '.join(params.model_order)}", "", *rows, ""]
    if gate is not None:
        lines += ["## Gates", ""] + [
            f"- {'✅' if g['passed'] else '❌'} {g['metric']} = {g['value']:.4g} (required {g['op']} {g['threshold']})"
            for g in gate["gates"]]
    plot = workdir / params.path("report", "accuracy_by_length.png")
    if plot.exists():
        encoded = base64.b64encode(plot.read_bytes()).decode()
        lines += ["", "## Accuracy by answer length", "", f"![accuracy by length](data:image/png;base64,{encoded})"]
    return "\n".join(lines)


@flow(name="distill-pipeline", log_prints=True)
def distill_pipeline(request: PipelineRequest | None = None) -> dict:
    request = request or PipelineRequest()
    logger = get_run_logger()
    workdir = Path(request.workdir).resolve()
    params = load_params(workdir / request.params_file)  # a malformed file fails here, before any stage
    deadline = request.stage_deadline_minutes * 60
    stages = [("prepare", "metrics/prepare.json"), ("teacher", "metrics/teacher.json")]
    stages += [(f"distill@{i}", f"metrics/distill-{hop.student}.json") for i, hop in enumerate(params.chain)]
    stages += [(f"evaluate@{name}", f"eval/{name}.json") for name in params.models]
    ensure_workspace_limit()
    if request.remote:
        run_command(["dvc", "remote", "default", "--local", request.remote], workdir, 60, "remote")
    progress = create_progress_artifact(progress=0.0, description=f"distill pipeline in {workdir}")
    outcomes, offloaded = {}, {}
    for done, (stage, metrics) in enumerate(stages, start=1):
        remote_run = None
        if request.gpu_deployment and is_gpu_stage(stage):
            remote_run = offload_stage(stage, request, workdir, deadline)
            if remote_run:
                offloaded[stage] = remote_run
        outcomes[stage] = run_stage.with_options(task_run_name=stage)(
            stage, str(workdir), deadline, metrics_file=str(Path(params.artifacts) / metrics),
            pull=request.pull or remote_run is not None, credentials_block=request.credentials_block)
        if request.push:
            push_stage(stage, str(workdir), request.remote, request.credentials_block, deadline)
        update_progress_artifact(progress, progress=100.0 * done / (len(stages) + 1))
    create_table_artifact(key="distill-stages", description="how each stage ran: here, skipped as up to date, "
                          "restored from the run cache, or on the GPU pool",
                          table=[{"stage": stage, "how": _how(outcome, offloaded.get(stage))}
                                 for stage, outcome in outcomes.items()])
    results = {name: outcomes[f"evaluate@{name}"]["metrics"] for name in params.model_order}
    create_table_artifact(key="distill-metrics", description="evaluation of every model of the chain",
                          table=[{"model": name, **{k: v for k, v in r.items() if not isinstance(v, dict | list)}}
                                 for name, r in results.items()])
    gate_failure = None
    try:
        run_stage.with_options(task_run_name="gate", retries=0)("gate", str(workdir), deadline)
    except StageFailed as failure:
        gate_failure = failure
    gate = load_gate(workdir, params)
    create_markdown_artifact(key="distill-report", markdown=_report(workdir, params, results, gate),
                             description="teacher / bridge / student comparison and gates")
    update_progress_artifact(progress, progress=100.0)
    if gate_failure is not None:
        message = "; ".join(f"{g['metric']} = {g['value']:.4g}, required {g['op']} {g['threshold']}"
                            for g in (gate or {}).get("gates", []) if not g["passed"]) or gate_failure.tail
        raise RuntimeError(f"evaluation gate failed, nothing promoted: {message}")
    promotion = promote(str(workdir), request.promote_stage) if request.promote else None
    logger.info("pipeline finished: %s", promotion or "not promoted (promote=False)")
    return {"stages": {k: v["skipped"] for k, v in outcomes.items()},
            "replayed": [k for k, v in outcomes.items() if v.get("replayed")], "offloaded": offloaded,
            "promotion": promotion, "gate": gate}


def load_gate(workdir: Path, params) -> dict | None:
    path = workdir / params.path("report", "gate.json")
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    distill_pipeline()
