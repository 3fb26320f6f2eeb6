"""Fixtures for the storage tests: a real S3-protocol server (moto's standalone server) on
loopback, run as a subprocess so that its memory (it keeps objects in RAM) never counts against
the test process, and so that it can be stopped and restarted to play an outage.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pressured.storage.base import Storage

# Distinctive values so a leak is found by plain substring search in captured logs.
ACCESS_KEY_ID = "AKIAPRESSUREDTEST01"
SECRET_ACCESS_KEY = "pressured-SECRET-do-not-log-7f3a9c"
SESSION_TOKEN = "pressured-TOKEN-do-not-log-e41b5d"
REGION = "us-east-1"


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes whose every 1 KiB block differs, so a reordered or repeated part shows."""
    blocks = (f"{seed:08d}:{i:012d}:".encode().ljust(1024, b".") for i in range(size // 1024 + 1))
    return b"".join(blocks)[:size]


def write_then_fail(store: Storage, key: str, data: bytes) -> None:
    with store.open_write(key) as writer:
        writer.write(data)
        raise RuntimeError("capture failed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1; ``stop``/``start`` keep the same port."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"moto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with {self.proc.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.url} within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fake static credentials in the environment, isolated from any real AWS setup."""
    empty = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                mp.delenv(name)
        mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        mp.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_CONFIG_FILE", str(empty))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        # Never wait on 169.254.169.254 from a test machine.
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory, aws_env: None) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


def raw_client(endpoint_url: str) -> Any:
    """A plain boto3 client for the tests' own checks (not the code under test). It has its own
    static credentials, so the environment's secret and token, which the code under test uses,
    can appear in a log only through the code under test."""
    import boto3.session
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        region_name=REGION,
        endpoint_url=endpoint_url,
        aws_access_key_id="AKIATESTSIDECLIENT",
        aws_secret_access_key="test-side-client-secret",
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="session")
def s3_client(moto_server: MotoServer) -> Any:
    return raw_client(moto_server.url)


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A fresh bucket per test, so tests never see each other's objects."""
    name = f"pressured-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name
