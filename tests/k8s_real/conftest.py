"""The real Kubernetes lane: etcd and kube-apiserver built from their Go modules by
scripts/k8s-lane, started on loopback once per session, with helm beside them.

What a fake API server cannot prove is proved here: RBAC and admission as a real cluster has
them, and the server's own validation of what the chart renders. The binaries take minutes to
build the first time, so `make test` leaves these tests out (-m "not k8s_real") and
`make test-k8s` builds the lane and runs them (PRESSURED_K8S_LANE=1). Without the binaries and
without PRESSURED_K8S_LANE the fixture skips; with PRESSURED_K8S_LANE set, a lane that fails to
build or start is an error.
"""

from __future__ import annotations

import os
import shlex
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube import Client, KubeConfig

ROOT = Path(__file__).resolve().parents[2]
LANE_SCRIPT = ROOT / "scripts" / "k8s-lane"
BINARIES = ("kube-apiserver", "etcd", "helm")
FIELD_MANAGER = "pressured-tests"


def lane_requested() -> bool:
    return os.environ.get("PRESSURED_K8S_LANE", "") not in ("", "0")


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _read_env(path: Path) -> dict[str, str]:
    """DIR/env: KEY=value lines, values quoted as the shell's printf %q does."""
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            words = shlex.split(value)
            env[key] = words[0] if words else ""
    return env


@dataclass
class Lane:
    """A running control plane: its kubeconfig (an admin in system:masters), an admin lightkube
    client, raw HTTP clients and helm."""

    dir: Path
    env: dict[str, str]
    client: Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = Client(
            KubeConfig.from_file(self.kubeconfig), field_manager=FIELD_MANAGER, trust_env=False
        )

    @property
    def kubeconfig(self) -> Path:
        return Path(self.env["KUBECONFIG"])

    @property
    def server(self) -> str:
        return self.env["K8S_LANE_SERVER"]

    @property
    def pki(self) -> Path:
        return Path(self.env["K8S_LANE_PKI"])

    @property
    def bin(self) -> Path:
        return Path(self.env["K8S_LANE_BIN"])

    @property
    def version(self) -> str:
        """The Kubernetes release built, e.g. v1.34.4."""
        return self.env["K8S_LANE_VERSION"]

    def _tls(self, admin: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if admin:
            ctx.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return ctx

    @cached_property
    def admin_http(self) -> httpx.Client:
        """Raw requests as the admin (client certificate in group system:masters)."""
        return httpx.Client(
            base_url=self.server, verify=self._tls(admin=True), trust_env=False, timeout=30
        )

    def token_http(self, token: str) -> httpx.Client:
        """Raw requests with a bearer token (a ServiceAccount's, say) and no client certificate."""
        return httpx.Client(
            base_url=self.server,
            verify=self._tls(admin=False),
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            timeout=30,
        )

    def helm(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """helm with the lane's kubeconfig, and its cache, config and data kept in the lane's
        directory."""
        home = self.dir / "helm"
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        proc = subprocess.run(
            [str(self.bin / "helm"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {shlex.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    # ---- faults: the API server alone stopped and started again; etcd compacted
    def stop_apiserver(self) -> None:
        """kube-apiserver stopped (SIGTERM); etcd runs on."""
        proc = run_lane("apiserver-stop", str(self.dir))
        assert proc.returncode == 0, proc.stderr

    def start_apiserver(self) -> None:
        """kube-apiserver started again on the same port with the same flags; ready on return."""
        proc = run_lane("apiserver-start", str(self.dir))
        assert proc.returncode == 0, _tail(proc.stderr)
        self.env = _read_env(self.dir / "env")

    def compact_etcd(self) -> int:
        """etcd compacted at its current revision, through etcd's own API (the gRPC gateway's
        /v3/kv/compaction): every older resourceVersion is gone. The revision."""
        with httpx.Client(base_url=self.env["K8S_LANE_ETCD"], trust_env=False, timeout=30) as etcd:
            r = etcd.post("/v3/kv/range", json={"key": "AA=="})  # any key: the header is the point
            assert r.status_code == 200, r.text
            revision = int(r.json()["header"]["revision"])
            r = etcd.post("/v3/kv/compaction", json={"revision": str(revision), "physical": True})
            assert r.status_code == 200, r.text
        return revision

    def close(self) -> None:
        if "admin_http" in self.__dict__:
            self.admin_http.close()
        self.client.close()


def run_lane(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LANE_SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=3600,
    )


@pytest.fixture(scope="session")
def k8s_lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    bindir = Path(run_lane("bindir").stdout.strip())
    built = all((bindir / name).is_file() for name in BINARIES)
    if not built and not lane_requested():
        pytest.skip(
            f"the Kubernetes lane is not built ({bindir} lacks {', '.join(BINARIES)}) and "
            "PRESSURED_K8S_LANE is not set: `make test-k8s` builds it and runs these tests"
        )
    build = run_lane("build")
    if build.returncode != 0:
        pytest.fail(f"scripts/k8s-lane build failed:\n{_tail(build.stderr)}", pytrace=False)

    lane_dir = tmp_path_factory.mktemp("k8s-lane")
    # The lane stops by itself if this session dies without its teardown.
    start = run_lane(
        "start", str(lane_dir), env={**os.environ, "K8S_LANE_OWNER_PID": str(os.getpid())}
    )
    if start.returncode != 0:
        run_lane("stop", str(lane_dir))
        pytest.fail(f"scripts/k8s-lane start failed:\n{_tail(start.stderr)}", pytrace=False)
    lane = Lane(lane_dir, _read_env(lane_dir / "env"))
    try:
        yield lane
    finally:
        lane.close()
        stop = run_lane("stop", str(lane_dir))
        assert stop.returncode == 0, stop.stderr


@pytest.fixture
def own_lane(
    k8s_lane: Lane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Lane]]:
    """``own_lane(*flags)``: a lane of its own (etcd and kube-apiserver, more kube-apiserver
    flags given) for a test that stops or restarts its API server or compacts its etcd, so
    the session's lane is not disturbed. Stopped after the test."""
    started: list[Lane] = []

    def start(*flags: str) -> Lane:
        lane_dir = tmp_path_factory.mktemp("k8s-own-lane")
        env = {
            **os.environ,
            "K8S_LANE_OWNER_PID": str(os.getpid()),
            "K8S_LANE_APISERVER_FLAGS": " ".join(flags),
        }
        proc = run_lane("start", str(lane_dir), env=env)
        if proc.returncode != 0:
            run_lane("stop", str(lane_dir))
            pytest.fail(f"scripts/k8s-lane start failed:\n{_tail(proc.stderr)}", pytrace=False)
        lane = Lane(lane_dir, _read_env(lane_dir / "env"))
        started.append(lane)
        return lane

    try:
        yield start
    finally:
        for lane in started:
            lane.close()
            stop = run_lane("stop", str(lane.dir))
            assert stop.returncode == 0, stop.stderr


@pytest.fixture
def kubepods() -> Iterator[Any]:
    """kubepods-shaped cgroups on this host for one test (tests/k8s_real/kubelet.py), removed
    with whatever runs in them."""
    import uuid

    from tests.k8s_real.kubelet import Kubepods

    tree = Kubepods(f"pressured-k8s-e2e-{uuid.uuid4().hex[:8]}")
    try:
        yield tree
    finally:
        tree.remove()


def api_error(response: httpx.Response) -> str:
    """The Status message of a failed request, for assertion messages."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        return str(body.get("message", body))[:500]
    return str(body)[:500]
