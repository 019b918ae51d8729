"""S3 credentials for DVC subprocesses: from the environment, or from a Prefect Secret block named by the flow.

Only the block's *name* is ever a parameter; its JSON value goes into the environment of the DVC subprocess
(`run_command(env=...)`) and nowhere else: never a task parameter, a log line or a file.
"""

from __future__ import annotations

import json

#: The keys a credentials Secret block may hold (any subset); everything else is refused by name.
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                   "AWS_DEFAULT_REGION")


def credentials_env(secret_block: str | None) -> dict[str, str]:
    """The environment a DVC subprocess needs from the Prefect Secret block `secret_block` ({} when None).

    The block holds a JSON object with any of :data:`CREDENTIAL_KEYS` (or a JSON string of one).
    """
    if not secret_block:
        return {}
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(secret_block).get()
    except ValueError as error:
        raise ValueError(f"credentials Secret block {secret_block!r} could not be loaded: {error}") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"credentials Secret block {secret_block!r} must hold a JSON object with keys "
                             f"{', '.join(CREDENTIAL_KEYS)}; it holds a plain string") from None
    if not isinstance(value, dict):
        raise ValueError(f"credentials Secret block {secret_block!r} must hold a JSON object, "
                         f"not {type(value).__name__}")
    unknown = sorted(set(value) - set(CREDENTIAL_KEYS))
    if unknown:
        raise ValueError(f"credentials Secret block {secret_block!r} has unknown keys {unknown}; "
                         f"allowed: {', '.join(CREDENTIAL_KEYS)}")
    return {key: str(v) for key, v in value.items()}
