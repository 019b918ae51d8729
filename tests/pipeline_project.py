"""A throw-away project directory for pipeline tests: the repo's dvc.yaml and code, tiny params, git + DVC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent
TINY_PARAMS = Path(__file__).parent / "fixtures" / "tiny_params.yaml"


def env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(ROOT),
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.com", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def sh(*command: str, cwd: Path, check: bool = True, extra_env: dict[str, str] | None = None
       ) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_project(path: Path, **param_overrides) -> Path:
    """dvc.yaml + params.yaml (tiny, with overrides merged per top-level key) + distill/ code, committed."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    shutil.copytree(ROOT / "distill", path / "distill", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load(TINY_PARAMS.read_text())
    for key, value in param_overrides.items():
        params[key] = {**params.get(key, {}), **value} if isinstance(value, dict) else value
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / ".gitignore").write_text("/artifacts/checkpoints\n")
    sh("git", "init", "-q", "-b", "main", cwd=path)
    sh("dvc", "init", "-q", cwd=path)
    shutil.copy(ROOT / ".dvc" / "config", path / ".dvc" / "config")  # the committed remotes
    shutil.copy(ROOT / ".dvcignore", path / ".dvcignore")
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-qm", "project", cwd=path)
    return path
