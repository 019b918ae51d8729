"""What can be validated here of the infrastructure: GitHub workflows (actionlint + the workflow JSON schema), the
compose file (compose-spec schema; `docker compose config` where the client has compose), the worker Dockerfile
(hadolint) and the Kubernetes GPU work-pool template (rendered with Prefect's own templating, registered on a
Prefect server, and checked against the job variables prefect.yaml passes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
TEMPLATE = ROOT / "infra" / "k8s" / "gpu-work-pool.json"


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_workflows_pass_actionlint_and_the_workflow_schema():
    assert {p.name for p in WORKFLOWS} == {"test.yml", "retrain.yml"}
    lint = run(str(BIN / "actionlint"), *map(str, WORKFLOWS))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    schema = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS))
    assert schema.returncode == 0, schema.stdout + schema.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ github.nonexistent_context_value }}\n        uses: actions/checkout@v5\n")
    assert run(str(BIN / "actionlint"), str(broken)).returncode != 0


def _steps(workflow: str) -> list[str]:
    config = yaml.safe_load((ROOT / ".github" / "workflows" / workflow).read_text())
    return [step.get("run", step.get("uses", "")) for job in config["jobs"].values() for step in job["steps"]]


def test_the_test_workflow_runs_the_ci_command():
    assert any("bash .ci/run" in s for s in _steps("test.yml"))


def test_the_retrain_workflow_pulls_reproduces_gates_pushes_and_posts_a_metrics_diff():
    config = yaml.safe_load((ROOT / ".github" / "workflows" / "retrain.yml").read_text())
    triggers = config[True]  # YAML 1.1 reads the key `on` as True
    assert {"params.yaml", "dvc.yaml"} <= set(triggers["push"]["paths"]) and "data/**" in triggers["push"]["paths"]
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers
    steps = _steps("retrain.yml")
    order = [next(i for i, s in enumerate(steps) if needle in s)
             for needle in ("dvc pull", "dvc repro", "dvc push", "dvc metrics diff")]
    assert order == sorted(order), steps
    assert any("GITHUB_STEP_SUMMARY" in s and "metrics diff" in s for s in steps)
    text = (ROOT / ".github" / "workflows" / "retrain.yml").read_text()
    assert "secrets.AWS_SECRET_ACCESS_KEY" in text  # credentials from repository secrets, nothing inline


def test_compose_file_matches_the_compose_spec():
    compose = ROOT / "infra" / "compose.yaml"
    result = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(compose))
    assert result.returncode == 0, result.stdout + result.stderr
    services = yaml.safe_load(compose.read_text())["services"]
    assert {"prefect-server", "s3", "worker"} <= set(services)
    assert "MINIO_ROOT_PASSWORD:?" in compose.read_text()  # secrets from the environment, required, not inline


def test_docker_compose_config_accepts_the_stack():
    docker = shutil.which("docker")
    if docker is None or run(docker, "compose", "version").returncode != 0:
        pytest.skip("no docker compose client on this machine")
    env_args = ["--env-file", "/dev/null"]
    result = subprocess.run([docker, "compose", *env_args, "-f", str(ROOT / "infra" / "compose.yaml"), "config",
                             "--quiet"], capture_output=True, text=True, timeout=120,
                            env={"MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "p", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr


def test_worker_dockerfile_passes_hadolint():
    result = run(str(BIN / "hadolint"), str(ROOT / "infra" / "docker" / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def _render(job_variables: dict) -> dict:
    from prefect.utilities.templating import apply_values

    template = json.loads(TEMPLATE.read_text())
    variables = {name: spec["default"] for name, spec in template["variables"]["properties"].items()
                 if "default" in spec}
    variables.update(job_variables)
    return apply_values(template["job_configuration"], variables)


def test_gpu_template_requests_gpus_and_takes_count_image_and_node_selector_as_job_variables():
    template = json.loads(TEMPLATE.read_text())
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    defaults = _render({})
    pod = defaults["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    job = _render({"gpu_count": 4, "image": "registry.example/distill:1.2",
                   "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}})
    pod = job["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 4
    assert container["image"] == "registry.example/distill:1.2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert job["job_manifest"]["kind"] == "Job" and job["job_manifest"]["apiVersion"] == "batch/v1"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"gpu_count": 0}, template["variables"])


def test_prefect_yaml_gpu_job_variables_fit_the_template():
    template = json.loads(TEMPLATE.read_text())
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    gpu = next(d for d in config["deployments"] if d["name"] == "gpu")
    jsonschema.validate(gpu["work_pool"]["job_variables"], template["variables"])
    assert set(gpu["work_pool"]["job_variables"]) <= set(template["variables"]["properties"])


def test_a_prefect_server_accepts_the_template_as_a_kubernetes_work_pool(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads(TEMPLATE.read_text())
    with get_client(sync_client=True) as client:
        pool = client.create_work_pool(WorkPoolCreate(name="distill-gpu-template-check", type="kubernetes",
                                                      base_job_template=template), overwrite=True)
        stored = client.read_work_pool(pool.name)
    assert stored.type == "kubernetes"
    assert stored.base_job_template["variables"]["properties"]["gpu_count"]["default"] == 1
