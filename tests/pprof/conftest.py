"""Fixtures for the pprof and heapdump tests: a real Go program, real profiles, go tool pprof.

tests/go/leaky is built once per session with the local Go toolchain (standard library only,
so no network), run once to write a heap profile, and run once more as a pprof HTTP server.
Without `go` (Debian: golang-go) these tests skip, saying so.
"""

from __future__ import annotations

import gzip
import importlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pressured.model import Identity, PressureEvent

LEAKY_SRC = Path(__file__).resolve().parents[1] / "go" / "leaky"
LEAK_FUNCTION = "main.(*leakyCache).grow"
OBJECTS_FUNCTION = "main.(*retainedTable).fill"
CHURN_FUNCTION = "main.churnBuffers"
HEAP_TYPES = ("inuse_space", "alloc_space", "inuse_objects", "alloc_objects")


def _go_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOFLAGS="-mod=mod",
        GOCACHE=str(tmp / "gocache"),
        GOPATH=str(tmp / "gopath"),
        GOPROXY="off",  # the program needs the standard library only
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
        HOME=str(tmp),
    )
    return env


@pytest.fixture(scope="session")
def go_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain is not installed (Debian package golang-go)")
    return _go_env(tmp_path_factory.mktemp("go"))


@pytest.fixture(scope="session")
def leaky_bin(go_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("leaky-bin") / "leaky"
    subprocess.run(
        ["go", "build", "-o", str(out), "."],
        cwd=LEAKY_SRC,
        env=go_env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@pytest.fixture(scope="session")
def heap_profile(leaky_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real gzip-compressed heap profile written by the Go runtime after a 16 MiB leak."""
    path = tmp_path_factory.mktemp("profiles") / "heap.pb.gz"
    subprocess.run(
        [str(leaky_bin), "-write-profile", str(path), "-write-after", "16", "-exit-after-write"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


@dataclass(frozen=True)
class ProfilePair:
    base: Path
    new: Path


@pytest.fixture(scope="session")
def heap_profile_pair(leaky_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> ProfilePair:
    """Two heap profiles of one run of the Go program: after a 4 MiB leak, then after 16 MiB."""
    out = tmp_path_factory.mktemp("pair")
    pair = ProfilePair(out / "base.pb.gz", out / "new.pb.gz")
    subprocess.run(
        [
            str(leaky_bin),
            "-write-base",
            str(pair.base),
            "-write-base-after",
            "4",
            "-write-profile",
            str(pair.new),
            "-write-after",
            "16",
            "-exit-after-write",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return pair


@dataclass
class LeakyServer:
    proc: subprocess.Popen[str]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str = "/debug/pprof/heap?gc=1") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="session")
def leaky_server(leaky_bin: Path) -> Iterator[LeakyServer]:
    """The Go program serving net/http/pprof on 127.0.0.1, leaking up to 32 MiB."""
    proc = subprocess.Popen(
        [str(leaky_bin), "-port", "0", "-cap", "32", "-rate", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, f"leaky did not report its address: {line!r}"
        server = LeakyServer(proc, int(match.group(1)))
        _wait_for_leak(server, 16 * 1024 * 1024)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_for_leak(server: LeakyServer, min_bytes: int) -> None:
    # The leak grows at 64 MiB/s; wait (bounded) until the server holds enough to dominate.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            text = httpx.get(server.url("/debug/pprof/heap?debug=1"), timeout=5).text
        except httpx.HTTPError:
            time.sleep(0.1)
            continue
        match = re.search(r"# HeapInuse = (\d+)", text)
        if match and int(match.group(1)) >= min_bytes:
            return
        time.sleep(0.1)
    raise AssertionError("leaky never reached its leak size")


# --------------------------------------------------------------------------------------------
# go tool pprof, parsed


@dataclass(frozen=True)
class GoRow:
    flat: int
    cum: int
    name: str


def go_pprof_text(path: Path, env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        ["go", "tool", "pprof", "-symbolize=none", *args, str(path)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout


_ROW = re.compile(r"^\s*(\S+)\s+\S+%\s+\S+%\s+(\S+)\s+\S+%\s+(.*?)(?: \((?:partial-)?inline\))?$")


def go_pprof_rows(path: Path, env: dict[str, str], sample_index: str, *extra: str) -> list[GoRow]:
    """Every row of `go tool pprof -top` in exact units (bytes for space, counts for objects)."""
    unit = ["-unit=B"] if sample_index.endswith("space") else []
    text = go_pprof_text(
        path,
        env,
        "-top",
        "-nodefraction=0",
        "-nodecount=0",
        f"-sample_index={sample_index}",
        *unit,
        *extra,
    )
    rows: list[GoRow] = []
    body = text.split("cum%\n", 1)[1]
    for line in body.splitlines():
        match = _ROW.match(line)
        assert match, f"unexpected go tool pprof line {line!r}"
        rows.append(GoRow(_exact(match.group(1)), _exact(match.group(2)), match.group(3)))
    return rows


def _exact(text: str) -> int:
    match = re.fullmatch(r"(-?\d+)B?", text)
    assert match, f"not an exact value: {text!r} (expected -unit=B output)"
    return int(match.group(1))


# --------------------------------------------------------------------------------------------
# synthetic profiles, built with the same protobuf runtime


class ProfileBuilder:
    """Builds a profile.proto message by hand, for shapes a Go program does not produce."""

    def __init__(self, sample_types: tuple[tuple[str, str], ...] = (("space", "bytes"),)) -> None:
        pb2: Any = importlib.import_module("pressured.pprof._pprof_pb2")
        self.msg: Any = pb2.Profile()
        self._strings: dict[str, int] = {}
        self.s("")
        for kind, unit in sample_types:
            self.msg.sample_type.add(type=self.s(kind), unit=self.s(unit))
        self._functions: dict[str, int] = {}

    def s(self, text: str) -> int:
        if text not in self._strings:
            self._strings[text] = len(self._strings)
            self.msg.string_table.append(text.encode())
        return self._strings[text]

    def mapping(self, file: str) -> int:
        mid = len(self.msg.mapping) + 1
        self.msg.mapping.add(id=mid, filename=self.s(file), has_functions=True)
        return mid

    def function(self, name: str, start_line: int = 0) -> int:
        key = f"{name}\0{start_line}"
        if key not in self._functions:
            fid = len(self.msg.function) + 1
            self.msg.function.add(id=fid, name=self.s(name), start_line=start_line)
            self._functions[key] = fid
        return self._functions[key]

    def location(self, *names: str, mapping_id: int = 0, address: int = 0) -> int:
        """A location whose lines are ``names``, innermost (inlined) first; none: no lines."""
        lid = len(self.msg.location) + 1
        loc = self.msg.location.add(id=lid, mapping_id=mapping_id, address=address)
        for name in names:
            loc.line.add(function_id=self.function(name))
        return lid

    def sample(
        self, locations: list[int], *values: int, labels: dict[str, int | str] | None = None
    ) -> None:
        sample = self.msg.sample.add(location_id=locations, value=list(values))
        for key, value in (labels or {}).items():
            if isinstance(value, str):
                sample.label.add(key=self.s(key), str=self.s(value))
            else:
                sample.label.add(key=self.s(key), num=value)

    def raw(self) -> bytes:
        return bytes(self.msg.SerializeToString())

    def gz(self) -> bytes:
        return gzip.compress(self.raw())


def pod_event(
    identity: Identity | None = None,
    *,
    severity: str = "critical",
    key: str = "shop/web-1/app",
    annotations: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> PressureEvent:
    """A pressure event on a pod's container, as heap capture sees one."""
    return PressureEvent(
        time=time.time(),
        severity=severity,  # type: ignore[arg-type]
        previous_severity="warn",
        cgroup="/kubepods/burstable/pod1234/cri-containerd-abc.scope",
        usage_bytes=900,
        working_set_bytes=880,
        limit_bytes=1000,
        usage_percent=90.0,
        growth_bytes_per_s=None,
        eta_seconds=None,
        psi_some_avg10=None,
        psi_full_avg10=None,
        rule="usage_percent >= 85",
        key=key,
        identity=identity or Identity(),
        annotations=annotations or {},
        dry_run=dry_run,
        extra=extra if extra is not None else {},
    )
