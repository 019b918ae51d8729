"""Artifacts in object storage: the DVC remote (S3 through dvc-s3/s3fs, or a local directory), and its credentials.

The remotes are named in the committed `.dvc/config`: `local` (a directory beside the checkout, the embedded
default) and `s3`. The S3 endpoint is AWS unless `AWS_ENDPOINT_URL_S3` (MinIO, moto, any S3-compatible store) or
an uncommitted `dvc remote modify --local s3 endpointurl ...` says otherwise.

Credentials come only from the environment of the process (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...) or
from a Prefect Secret block whose name (never its value) is a flow parameter. A block's JSON value is handed to
the DVC subprocess's environment and nowhere else: it is never a task parameter, never logged, never written.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import task

from tasks.credentials import credentials_env
from tasks.stages import StageFailed, retry_when, run_command

_DVC_ERROR = re.compile(r"ERROR: (?:failed to transfer '\w+' - |unexpected error - )?(.+)")


class PushFailed(RuntimeError):
    """`dvc push` did not finish; retrying is safe (objects are content-addressed and appear only when whole)."""

    def __init__(self, remote: str, url: str, failed: int | None, tail: str) -> None:
        self.remote, self.url, self.failed, self.tail = remote, url, failed, tail
        what = f"{failed} file(s) failed to upload" if failed is not None else "the push did not complete"
        errors = [e.strip() for e in _DVC_ERROR.findall(tail) if not e.startswith("failed to push data")]
        cause = f" ({errors[0]})" if errors else ""
        super().__init__(
            f"dvc push to remote {remote!r} ({url}) failed: {what}{cause}. Files already in the remote are complete "
            "(S3 objects appear only when fully written, named by their content hash) and the local cache is "
            "unchanged, so running the push again uploads only what is missing.\n" + tail[-1500:])


def remote_url(workdir: str | Path, remote: str | None) -> tuple[str, str]:
    """(name, url) of `remote`, or of the default remote when None; url is "?" when it cannot be read."""
    listing = run_command(["dvc", "remote", "list"], workdir, 60, "remote", quiet=True)
    remotes = dict(line.split()[:2] for line in listing.splitlines() if len(line.split()) >= 2)
    if remote is None:
        default = run_command(["dvc", "remote", "default"], workdir, 60, "remote", quiet=True,
                              check=False).strip()
        remote = default or "(default)"
    return remote, remotes.get(remote, "?")


def push_artifacts(workdir: str | Path, remote: str | None = None, *, deadline_s: float = 3600.0,
                   env: dict[str, str] | None = None, what: str = "push") -> str:
    """`dvc push --run-cache [-r remote]`: every cached output and the run cache. Raises PushFailed."""
    command = ["dvc", "push", "--run-cache", *(["-r", remote] if remote else [])]
    try:
        return run_command(command, workdir, deadline_s, what, env=env)
    except StageFailed as failure:
        name, url = remote_url(workdir, remote)
        counts = re.findall(r"(\d+) files? failed to upload", failure.tail)
        raise PushFailed(name, url, int(counts[-1]) if counts else None, failure.tail) from None


_retry_push = retry_when(lambda error: isinstance(error, PushFailed))


@task(retries=3, retry_delay_seconds=[5, 20, 60], retry_condition_fn=_retry_push, task_run_name="push {stage}")
def push_stage(stage: str, workdir: str, remote: str | None = None, credentials_block: str | None = None,
               deadline_s: float = 3600.0) -> None:
    """Push after `stage` succeeded; an outage is retried (a push resumes where the last one stopped)."""
    push_artifacts(workdir, remote, deadline_s=deadline_s, env=credentials_env(credentials_block),
                   what=f"push {stage}")
