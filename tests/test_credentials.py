"""S3 credentials from a Prefect Secret block: only the allowed keys, clear errors, and only into a subprocess."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from tasks.credentials import CREDENTIAL_KEYS, credentials_env
from tasks.storage import PushFailed


def _save(name: str, value) -> None:
    from prefect.blocks.system import Secret

    Secret(value=value).save(name, overwrite=True)


def test_a_secret_block_gives_the_subprocess_environment_and_nothing_else(prefect_harness):
    _save("creds-ok", {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    assert credentials_env("creds-ok") == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    assert "s3cr3t" not in os.environ.values()  # handed to subprocesses only
    assert credentials_env(None) == {}


def test_a_block_with_unknown_keys_is_refused_by_name_without_echoing_values(prefect_harness):
    _save("creds-bad", {"AWS_ACCESS_KEY_ID": "id", "aws_secret": "do-not-print"})
    with pytest.raises(ValueError, match=r"creds-bad.*unknown keys \['aws_secret'\]") as error:
        credentials_env("creds-bad")
    assert "do-not-print" not in str(error.value)
    assert set(CREDENTIAL_KEYS) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"}


def test_a_block_holding_a_plain_string_or_a_missing_block_is_a_clear_error(prefect_harness):
    _save("creds-string", "just-a-string")
    with pytest.raises(ValueError, match=r"creds-string.*JSON object"):
        credentials_env("creds-string")
    with pytest.raises(ValueError, match="no-such-block"):
        credentials_env("no-such-block")


def test_push_failure_message_names_remote_url_count_and_cause():
    tail = ("ERROR: failed to transfer 'abc123' - Could not connect to the endpoint URL: \"http://h:1/b\"\n"
            "ERROR: failed to push data to the cloud - 3 files failed to upload")
    message = str(PushFailed("s3", "s3://bucket/dvc", 3, tail))
    assert "remote 's3' (s3://bucket/dvc)" in message and "3 file(s) failed to upload" in message
    assert "running the push again uploads only what is missing" in message
    assert "(Could not connect to the endpoint URL" in message  # the cause, not the summary line


def test_gpu_offload_without_push_is_refused():
    from flows.pipeline import PipelineRequest

    with pytest.raises(ValidationError, match="gpu_deployment needs push=True"):
        PipelineRequest(gpu_deployment="distill-gpu-stage/gpu")
    assert PipelineRequest(gpu_deployment="distill-gpu-stage/gpu", push=True).push


def test_retry_when_retries_only_the_errors_it_names(prefect_harness):
    from prefect import flow, task

    from tasks.stages import StageFailed, _retry_transient

    attempts: list[int] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=_retry_transient)
    def fail(code: int) -> None:
        attempts.append(code)
        raise StageFailed("teacher", code, "killed")

    @flow
    def run(code: int) -> None:
        fail(code)

    for code, expected in ((-9, 3), (2, 1)):  # killed: retried twice; bad input (exit 2): failed at once
        attempts.clear()
        with pytest.raises(StageFailed):
            run(code)
        assert len(attempts) == expected, (code, attempts)
