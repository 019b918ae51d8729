"""The pipeline through DVC and through a killed Prefect flow: no-op re-runs, resume without recomputation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.pipeline_project import env, make_project, sh

pytestmark = pytest.mark.slow


def test_dvc_repro_then_a_second_repro_is_a_quick_no_op(tmp_path):
    project = make_project(tmp_path / "project")
    sh("dvc", "repro", cwd=project)
    assert (project / "artifacts/report/gate.json").exists()
    start = time.perf_counter()
    again = sh("dvc", "repro", cwd=project)
    seconds = time.perf_counter() - start
    assert "Data and pipelines are up to date" in again.stdout, again.stdout
    assert "Running stage" not in again.stdout
    assert seconds < 10, seconds
    status = sh("dvc", "status", cwd=project)
    assert "up to date" in status.stdout


FLOW = """
import sys
from flows.pipeline import PipelineRequest, distill_pipeline
distill_pipeline(PipelineRequest(workdir=sys.argv[1], promote=False))
"""


def test_a_flow_killed_mid_stage_reruns_without_recomputing_finished_stages(tmp_path, prefect_harness):
    project = make_project(tmp_path / "project",
                           chain=[{"teacher": "teacher", "student": "student", "method": "gold", "lmbda": 0.5,
                                   "max_steps": 40, "batch_size": 8, "max_new_tokens": 10}])
    flow_env = {**env(), "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": ""}
    process = subprocess.Popen([sys.executable, "-c", FLOW, str(project)], env=flow_env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = project / "artifacts/checkpoints/student"
    deadline = time.time() + 300
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-*")):
        assert process.poll() is None, "the flow ended before it could be killed"
        time.sleep(0.5)
    assert list(checkpoints.glob("checkpoint-*")), "the distill stage never checkpointed"
    os.killpg(process.pid, signal.SIGKILL)  # the flow, its DVC process and the training stage, mid-stage
    process.wait()
    assert not (project / "artifacts/models/student").exists()
    teacher_stamp = (project / "artifacts/models/teacher/model.safetensors").stat().st_mtime_ns

    from flows.pipeline import PipelineRequest, distill_pipeline

    sh("rm", "-f", ".dvc/tmp/rwlock", ".dvc/tmp/lock", cwd=project, check=False)  # a killed DVC leaves its lock
    result = distill_pipeline(PipelineRequest(workdir=str(project), promote=False))
    assert result["stages"]["prepare"] and result["stages"]["teacher"], result["stages"]
    assert not result["stages"]["distill@0"]
    assert (project / "artifacts/models/teacher/model.safetensors").stat().st_mtime_ns == teacher_stamp
    metrics = json.loads((project / "artifacts/metrics/distill-student.json").read_text())
    assert metrics["resumed"] is True


def test_a_hop_with_nproc_per_node_2_trains_under_torchrun_and_rank_0_alone_writes(tmp_path):
    chain = [{"teacher": "teacher", "student": "student", "method": "gold", "lmbda": 0.5, "max_steps": 4,
              "batch_size": 4, "max_new_tokens": 10, "nproc_per_node": 2}]
    project = make_project(tmp_path / "project", chain=chain)
    sh("dvc", "repro", "teacher", cwd=project)
    out = sh("distill", "stage", "distill", "--model", "student", cwd=project)
    assert "torch.distributed.run" in out.stdout and "--nproc_per_node=2" in out.stdout, out.stdout
    metrics = json.loads((project / "artifacts/metrics/distill-student.json").read_text())
    assert metrics["processes"] == 2
    assert (project / "artifacts/models/student/model.safetensors").exists()
    assert not (project / "artifacts/checkpoints/student").exists()  # removed once the model is saved


def test_checkpoints_of_a_changed_hop_are_discarded_not_resumed(tmp_path):
    from distill.stages import resumable_checkpoints

    checkpoints = tmp_path / "checkpoints"
    assert resumable_checkpoints(checkpoints, {"hop": {"lmbda": 0.5}}) is False
    (checkpoints / "checkpoint-2").mkdir()
    assert resumable_checkpoints(checkpoints, {"hop": {"lmbda": 0.5}}) is True  # same hop: resume
    assert resumable_checkpoints(checkpoints, {"hop": {"lmbda": 0.0}}) is False  # changed: discarded
    assert not (checkpoints / "checkpoint-2").exists()
