"""A real S3-compatible server for tests: moto's server process on 127.0.0.1, and a proxy to cut it off."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class MotoServer:
    """`moto_server` on a free port; `reset()` empties it between tests."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                                         "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self.process)

    def client(self, endpoint: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=endpoint or self.url, aws_access_key_id="test-key-id",
                            aws_secret_access_key="test-secret", region_name="us-east-1")

    def reset(self, bucket: str) -> None:
        """Forget everything stored, then create an empty `bucket`."""
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10)
        self.client().create_bucket(Bucket=bucket)

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object in `bucket`: key -> content."""
        client, out = self.client(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class SlowProxy:
    """tests/scripts/tcp_proxy.py in front of a server: `stop()` takes the endpoint away mid-transfer."""

    def __init__(self, target_port: int, delay: float, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = Path(__file__).parent / "scripts" / "tcp_proxy.py"
        self.process = subprocess.Popen([sys.executable, str(script), str(self.port), str(target_port), str(delay)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self.process)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def content_addressed_problems(objects: dict[str, bytes]) -> list[str]:
    """Keys of DVC's content-addressed store (`.../files/md5/ab/cdef...`) whose content has another md5.

    Directory manifests (`.dir`) are hashed the same way. Run-cache entries (`runs/...`) are not content-addressed.
    """
    bad = []
    for key, body in objects.items():
        if "/files/md5/" not in key:
            continue
        prefix, rest = key.split("/files/md5/")[1].split("/")
        expected = prefix + rest.removesuffix(".dir")
        if hashlib.md5(body).hexdigest() != expected:
            bad.append(key)
    return bad
