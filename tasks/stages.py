"""Prefect tasks that run one pipeline stage through DVC.

A stage runs as `dvc repro --single-item <stage>` in a subprocess with its own process group and a deadline:
DVC skips it when its deps, params and outs are unchanged (so a flow killed mid-run and started again redoes
only the unfinished stages), and a stage past its deadline is killed with its whole process group. Retries are
for transient failures only (killed, timed out, out of resources); bad parameters (exit 2) and failed gates
(exit 3) fail at once. Tasks pass paths and small dicts, never tensors.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError

from tasks.credentials import credentials_env

EXIT_BAD_INPUT, EXIT_GATE = 2, 3
WORKSPACE_LIMIT = "distill-workspace"


class StageFailed(RuntimeError):
    def __init__(self, stage: str, returncode: int, tail: str) -> None:
        # DVC exits 255 for any failed stage and names the command's own code in its output
        reported = re.findall(r"exited with (-?\d+)", tail)
        self.stage, self.tail = stage, tail
        self.returncode = int(reported[-1]) if reported else returncode
        super().__init__(f"stage {stage} failed (exit {self.returncode}):\n{tail}")

    @property
    def transient(self) -> bool:
        """Killed by a signal (OOM killer, pre-emption) or past its deadline: worth a retry. Errors are not."""
        return self.returncode < 0 or self.returncode in (137, 143) or self.tail.startswith("Timeout")


def retry_when(should_retry):
    """A Prefect `retry_condition_fn` that retries a failed run only when `should_retry(error)` says so;
    any other error fails at once."""

    def condition(task, task_run, state) -> bool:
        try:
            state.result()
        except Exception as error:
            return bool(should_retry(error))
        return False

    return condition


_retry_transient = retry_when(lambda error: isinstance(error, StageFailed) and error.transient)


def _logger():
    """The Prefect run logger inside a flow or task, else this module's logger (scripts, tests)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The stage sees this interpreter's scripts (distill, dvc) first on PATH, plus `extra` (credentials)."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), **(extra or {})}


def run_command(command: list[str], workdir: str | Path, deadline_s: float, stage: str, *,
                env: dict[str, str] | None = None, quiet: bool = False, check: bool = True) -> str:
    """Run `command` in its own process group; kill the whole group at the deadline. Returns its output.

    `env` is added to the subprocess's environment only (credentials never reach this process's environment,
    a log or a file). The last lines of the output are logged unless `quiet`; a non-zero exit raises
    StageFailed unless `check` is False.
    """
    process = subprocess.Popen(command, cwd=workdir, env=_env(env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise StageFailed(stage, -signal.SIGKILL, f"Timeout after {deadline_s:.0f}s\n{output[-3000:]}") from None
    except BaseException:  # flow cancelled or interpreter exiting: take the stage down with us
        os.killpg(process.pid, signal.SIGKILL)
        raise
    if not quiet:
        logger = _logger()
        for line in output.strip().splitlines()[-20:]:
            logger.info("%s | %s", stage, line)
    if check and process.returncode != 0:
        raise StageFailed(stage, process.returncode, output[-3000:])
    return output


def exit_code(command: list[str], workdir: str | Path, timeout_s: float = 600) -> int:
    """The exit status of a quick query command (`dvc status --quiet`, ...), output discarded."""
    return subprocess.run(command, cwd=workdir, env=_env(), capture_output=True, timeout=timeout_s).returncode


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_transient, task_run_name="{stage}")
def run_stage(stage: str, workdir: str, deadline_s: float = 3600.0, metrics_file: str | None = None,
              pull: bool = False, credentials_block: str | None = None) -> dict:
    """`dvc repro --single-item [--pull] <stage>` under the workspace concurrency limit; returns its metrics.

    With `pull`, missing dependencies and the run cache come from the default remote first, so a stage that
    already ran elsewhere (a GPU worker, CI) is restored from the run cache instead of recomputed
    (`replayed` in the result).
    """
    command = ["dvc", "repro", "--single-item", *(["--pull"] if pull else []), stage]
    with concurrency(f"{WORKSPACE_LIMIT}", occupy=1, strict=False):
        output = run_command(command, workdir, deadline_s, stage, env=credentials_env(credentials_block))
    replayed = "skipping run, checking out outputs" in output
    skipped = "didn't change, skipping" in output
    metrics = {}
    if metrics_file and (Path(workdir) / metrics_file).exists():
        metrics = json.loads((Path(workdir) / metrics_file).read_text())
    return {"stage": stage, "skipped": skipped, "replayed": replayed, "metrics": metrics}
