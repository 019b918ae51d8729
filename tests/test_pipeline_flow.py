"""The Prefect pipeline flow end to end on tiny settings, through DVC: artifacts, gates, promotion, re-runs."""

from __future__ import annotations

import json

import pytest

from tests.pipeline_project import make_project, sh

pytestmark = pytest.mark.slow


def _flow(workdir, **request):
    from flows.pipeline import PipelineRequest, distill_pipeline

    return distill_pipeline(PipelineRequest(workdir=str(workdir), **request))


def test_flow_runs_every_stage_checks_the_gate_and_promotes(tmp_path, prefect_harness):
    project = make_project(tmp_path / "project")
    result = _flow(project)
    artifacts = project / "artifacts"
    for folder in ("data", "tokenizers/bpe", "tokenizers/unigram", "models/teacher", "models/student"):
        assert (artifacts / folder).is_dir(), folder
    assert (artifacts / "models/student/model.safetensors").exists()
    for name in ("teacher", "student"):
        metrics = json.loads((artifacts / f"eval/{name}.json").read_text())
        assert 0.0 <= metrics["exact_match"] <= 1.0 and metrics["num_parameters"] > 0
    gate = json.loads((artifacts / "report/gate.json").read_text())
    assert gate["passed"] and result["gate"]["passed"]
    assert (artifacts / "report/accuracy_by_length.png").exists()
    assert result["promotion"]["stage"] == "prod"
    tags = sh("git", "tag", cwd=project).stdout.split()
    assert any(t.startswith("student@v") for t in tags) and any(t.startswith("student#prod") for t in tags), tags
    # a second run with nothing changed redoes no stage
    again = _flow(project, promote=False)
    assert all(again["stages"].values()), again["stages"]

    from prefect.client.orchestration import get_client  # the run left its report artifacts

    async def keys():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    import asyncio

    assert {"distill-metrics", "distill-report"} <= asyncio.run(keys())


def test_impossible_gate_fails_the_flow_and_promotes_nothing(tmp_path, prefect_harness):
    project = make_project(tmp_path / "project", gates={"min_student_accuracy": 1.0, "min_speedup": 1000.0})
    with pytest.raises(RuntimeError, match=r"gate failed.*student exact_match = .*required >= 1\.0"):
        _flow(project)
    gate = json.loads((project / "artifacts/report/gate.json").read_text())
    assert not gate["passed"]
    assert sh("git", "tag", cwd=project).stdout.strip() == ""


def test_malformed_params_fail_before_any_stage(tmp_path, prefect_harness):
    from distill.config import ParamsError

    project = make_project(tmp_path / "project", chain=[{"teacher": "teacher", "student": "student", "lmbda": 7}])
    with pytest.raises(ParamsError, match=r"chain\.0\.lmbda"):
        _flow(project)
    assert not (project / "artifacts").exists()
