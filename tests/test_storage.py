"""Artifacts in object storage, against a real S3-compatible server process (moto's server on 127.0.0.1).

Push, then pull into a fresh clone and compare bytes; replay stages from the run cache in a clone that has only
the code; take the endpoint away in the middle of a push: a clear error, nothing corrupt, and a retry completes.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from tasks.storage import PushFailed, push_artifacts
from tests.pipeline_project import ROOT, make_project, sh
from tests.s3 import CREDENTIALS, SlowProxy, content_addressed_problems

pytestmark = pytest.mark.slow
BUCKET = "distill-pipeline"  # the bucket the committed .dvc/config names for the `s3` remote


@pytest.fixture
def s3(moto_server):
    moto_server.reset(bucket=BUCKET)
    return moto_server


def s3_env(endpoint: str) -> dict[str, str]:
    return {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_MAX_ATTEMPTS": "2"}


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def clone(project: Path, to: Path, revision: str | None = None) -> Path:
    sh("git", "clone", "-q", str(project), str(to), cwd=project.parent)
    if revision:
        sh("git", "checkout", "-q", revision, cwd=to)
    sh("dvc", "remote", "default", "--local", "s3", cwd=to)
    return to


def test_the_committed_config_has_a_local_default_and_an_s3_remote():
    config = (ROOT / ".dvc" / "config").read_text()
    assert "remote = local" in config
    assert f"url = s3://{BUCKET}/" in config
    assert "access_key" not in config and "secret" not in config.replace("Secret block", "")


def test_push_then_pull_in_a_fresh_clone_and_replay_from_the_run_cache(s3, tmp_path):
    project = make_project(tmp_path / "project")
    code_only = sh("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    sh("dvc", "repro", "teacher", cwd=project)
    sh("dvc", "remote", "default", "--local", "s3", cwd=project)
    push_artifacts(project, "s3", env=s3_env(s3.url))
    stored = s3.objects(BUCKET)
    assert any("/runs/" in key for key in stored), "the run cache was not pushed"
    assert not content_addressed_problems(stored)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "artifacts", cwd=project)
    produced = {out: digests(project / out) for out in ("artifacts/data", "artifacts/tokenizers",
                                                        "artifacts/models/teacher")}

    # another machine with the lock file: `dvc pull` gives the exact bytes, and nothing is out of date
    pulled = clone(project, tmp_path / "pulled")
    sh("dvc", "pull", "--with-deps", "teacher", cwd=pulled, extra_env=s3_env(s3.url))
    assert {out: digests(pulled / out) for out in produced} == produced
    assert "up to date" in sh("dvc", "status", "teacher", cwd=pulled).stdout

    # another machine with only the code and params: the stages replay from the run cache, nothing recomputes
    replay = clone(project, tmp_path / "replay", revision=code_only)
    assert not (replay / "dvc.lock").exists()
    out = sh("dvc", "repro", "--pull", "teacher", cwd=replay, extra_env=s3_env(s3.url)).stdout
    assert "Stage 'prepare' is cached - skipping run" in out, out
    assert "Stage 'teacher' is cached - skipping run" in out, out
    assert {o: digests(replay / o) for o in produced} == produced


def test_a_push_cut_off_midway_fails_clearly_corrupts_nothing_and_a_retry_completes(s3, tmp_path):
    project = make_project(tmp_path / "project")
    sh("dvc", "repro", "prepare", cwd=project)
    sh("dvc", "remote", "default", "--local", "s3", cwd=project)
    sh("dvc", "remote", "modify", "--local", "s3", "jobs", "1", cwd=project)
    sh("dvc", "remote", "modify", "--local", "s3", "connect_timeout", "2", cwd=project)
    local_cache = project / ".dvc" / "cache"
    cache_before = digests(local_cache)

    import threading

    proxy = SlowProxy(s3.port, delay=0.4)
    failure: list[BaseException] = []

    def push() -> None:
        try:
            push_artifacts(project, "s3", env=s3_env(proxy.url), deadline_s=300)
        except BaseException as error:
            failure.append(error)

    pusher = threading.Thread(target=push)
    pusher.start()
    deadline = time.time() + 120
    while time.time() < deadline and not any("/files/md5/" in k for k in s3.objects(BUCKET)):
        time.sleep(0.05)
    proxy.stop()  # the endpoint goes away in the middle of the push
    pusher.join(timeout=300)
    assert not pusher.is_alive()
    partial = s3.objects(BUCKET)
    assert failure and isinstance(failure[0], PushFailed), failure
    message = str(failure[0])
    print(message)
    assert "remote 's3'" in message and f"s3://{BUCKET}/dvc" in message and "failed" in message
    assert "running the push again" in message and "Could not connect to the endpoint" in message
    assert len([k for k in partial if "/files/md5/" in k]) > 0, "nothing was pushed before the cut"
    assert not content_addressed_problems(partial)
    assert digests(local_cache) == cache_before, "the local cache changed"

    proxy = SlowProxy(s3.port, delay=0.0, port=proxy.port)  # the endpoint is back
    try:
        output = push_artifacts(project, "s3", env=s3_env(proxy.url), deadline_s=300)
    finally:
        proxy.stop()
    complete = s3.objects(BUCKET)
    assert not content_addressed_problems(complete)
    pushed = [k for k in complete if "/files/md5/" in k]
    assert len(pushed) > len([k for k in partial if "/files/md5/" in k])
    assert "pushed" in output
    assert "are in sync" in sh("dvc", "status", "-c", "-r", "s3", cwd=project, extra_env=s3_env(s3.url)).stdout
