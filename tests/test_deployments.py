"""Deployments from prefect.yaml on a real `prefect server`, process workers, and S3 credentials from a Secret block.

The end-to-end test deploys every deployment of prefect.yaml, starts a worker per pool and triggers the on-demand
deployment of the tiny pipeline with `gpu_deployment` set: the orchestrating run stays on the CPU pool while the
teacher and distillation stages run as flow runs of the GPU deployment, and everything moves through a moto S3
server. Kubernetes is not available here, so the `distill-gpu` pool is created as a *process* pool in the test
(prefect.yaml names pools, not their types); its Kubernetes template is checked in tests/test_infra.py. The S3
secret key is a marker that must not appear in any log, artifact, parameter, file or bucket object afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pipeline_project import ROOT, env, make_project, sh
from tests.prefect_server import PrefectServer, Worker

MARKER = "MARKER-s3cr3t-7f3a9c0e5b"
BUCKET = "distill-pipeline"


def test_prefect_yaml_declares_a_nightly_schedule_an_on_demand_and_a_gpu_deployment():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"nightly", "on-demand", "gpu"}
    nightly = deployments["nightly"]
    assert nightly["schedules"][0]["cron"] == "0 2 * * *" and nightly["schedules"][0]["active"]
    assert "schedules" not in deployments["on-demand"]
    assert nightly["entrypoint"] == deployments["on-demand"]["entrypoint"] == "flows/pipeline.py:distill_pipeline"
    assert nightly["work_pool"]["name"] == "distill-cpu"
    gpu = deployments["gpu"]
    assert gpu["entrypoint"] == "flows/gpu_stage.py:gpu_stage" and gpu["work_pool"]["name"] == "distill-gpu"
    assert {"gpu_count", "image", "node_selector"} <= set(gpu["work_pool"]["job_variables"])
    request = nightly["parameters"]["request"]
    assert request["gpu_deployment"] == "distill-gpu-stage/gpu" and request["push"]
    from flows.pipeline import PipelineRequest

    PipelineRequest(**request)  # the deployment's parameters are valid
    text = (ROOT / "prefect.yaml").read_text().lower()
    assert "secret_access_key" not in text and "password" not in text


def prefect(*args: str, env_: dict[str, str], cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "prefect", *args], env=env_, cwd=cwd, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def deploy_project(path: Path) -> Path:
    project = make_project(path)
    for folder in ("flows", "tasks"):
        shutil.copytree(ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "prefect.yaml", project / "prefect.yaml")
    (project / ".gitignore").write_text("/artifacts/checkpoints\n__pycache__/\n")
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "flows", cwd=project)
    return project


@pytest.mark.slow
def test_deployed_pipeline_runs_on_workers_with_gpu_stages_on_the_gpu_pool_and_leaks_no_secret(tmp_path, moto_server):
    project = deploy_project(tmp_path / "project")
    s3 = moto_server
    server = PrefectServer(tmp_path / "prefect-home")
    workers: list[Worker] = []
    try:
        s3.reset(bucket=BUCKET)
        base = {**env(), **server.env, "DISTILL_PROJECT_DIR": str(project), "AWS_ENDPOINT_URL_S3": s3.url,
                "AWS_DEFAULT_REGION": "us-east-1"}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            base.pop(key, None)  # credentials come only from the Secret block
        prefect("work-pool", "create", "distill-cpu", "--type", "process", env_=base, cwd=project)
        prefect("work-pool", "create", "distill-gpu", "--type", "process", env_=base, cwd=project)
        subprocess.run([sys.executable, "-c", (
            "import json, sys; from prefect.blocks.system import Secret; "
            "Secret(value=json.loads(sys.argv[1])).save('distill-s3-credentials', overwrite=True)"),
            json.dumps({"AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": MARKER})],
            env=base, check=True, timeout=120)
        out = prefect("deploy", "--all", env_=base, cwd=project)
        assert "distill-pipeline/nightly" in out and "distill-gpu-stage/gpu" in out, out
        workers = [Worker(pool, base, tmp_path / f"worker-{pool}.log", project)
                   for pool in ("distill-cpu", "distill-gpu")]

        request = {"workdir": ".", "push": True, "pull": False, "remote": "s3",
                   "credentials_block": "distill-s3-credentials", "gpu_deployment": "distill-gpu-stage/gpu",
                   "repository": str(project), "promote": False, "stage_deadline_minutes": 10}
        runner = subprocess.run([sys.executable, "-c", TRIGGER, json.dumps(request)], env=base, cwd=project,
                                capture_output=True, text=True, timeout=900)
        assert runner.returncode == 0, runner.stdout + runner.stderr
        summary = json.loads(runner.stdout.strip().splitlines()[-1])
        logs = "\n".join(w.log_path.read_text() for w in workers)
        assert summary["state"] == "COMPLETED", f"{summary}\n{logs[-5000:]}"
        assert summary["pool"] == "distill-cpu"
        gpu_runs = {r["stage"]: r for r in summary["gpu_runs"]}
        assert set(gpu_runs) == {"teacher", "distill@0"}, summary["gpu_runs"]
        assert all(r["state"] == "COMPLETED" and r["pool"] == "distill-gpu" for r in gpu_runs.values())
        how = summary["stages"]
        assert how["teacher"].startswith("gpu pool") and how["distill@0"].startswith("gpu pool"), how
        assert how["prepare"] == "ran here" and how["evaluate@student"] == "ran here", how
        assert (project / "artifacts/models/student/model.safetensors").exists()
        stored = s3.objects(BUCKET)
        assert any("/runs/" in key for key in stored) and len(stored) > 10  # the run went through S3

        # the secret is nowhere: logs, artifacts, parameters, files of the project (git history included), bucket
        assert MARKER not in summary["logs"] and MARKER not in summary["artifacts"]
        assert MARKER not in summary["parameters"]
        assert MARKER not in logs and MARKER not in (server.home / "server.log").read_text()
        leaked = [str(p) for p in project.rglob("*") if p.is_file() and MARKER.encode() in p.read_bytes()]
        assert not leaked, leaked
        history = sh("git", "log", "-p", "--all", cwd=project).stdout
        assert MARKER not in history
        assert not [k for k, body in stored.items() if MARKER.encode() in body]
    finally:
        for worker in workers:
            worker.stop()
        server.stop()


TRIGGER = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment

run = run_deployment("distill-pipeline/on-demand", parameters={"request": json.loads(sys.argv[1])}, timeout=840)

async def summary():
    async with get_client() as client:
        run_ = await client.read_flow_run(run.id)
        children = await client.read_flow_runs()
        gpu = [r for r in children if r.deployment_id and r.id != run.id and r.parameters.get("stage")]
        ids = [run.id, *[r.id for r in gpu]]
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        artifacts = await client.read_artifacts()
        stages = [a for a in artifacts if a.key == "distill-stages" and a.flow_run_id == run.id]
        table = json.loads(stages[0].data) if stages else []
        return {"state": run_.state.type.value, "message": run_.state.message, "pool": run_.work_pool_name,
                "gpu_runs": [{"stage": r.parameters["stage"], "state": r.state.type.value, "pool": r.work_pool_name}
                             for r in gpu],
                "stages": {row["stage"]: row["how"] for row in table}, "logs": "\\n".join(l.message for l in logs),
                "artifacts": json.dumps([a.model_dump(mode="json") for a in artifacts]),
                "parameters": json.dumps([r.parameters for r in children], default=str)}

print(json.dumps(asyncio.run(summary()), default=str))
"""
