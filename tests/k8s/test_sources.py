"""Node and sidecar sources without an API server: their configuration errors, and the sidecar
finding its pod's containers through the shared PID namespace alone. With pods from a real API
server they are in tests/k8s_real/test_parts.py (their trees from tests/support/podtrees.py)
and, as the daemon runs them, in tests/k8s_real/test_node_e2e.py and test_sidecar_e2e.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from pressured.errors import ConfigError
from pressured.k8s.client import KubeClient
from pressured.sources.base import TargetSpec
from pressured.sources.node import NodeSource
from pressured.sources.sidecar import SidecarSource
from tests.support.podtrees import (
    SANDBOX,
    WEB_APP,
    WEB_ENVOY,
    WEB_UID,
    cgroup_root,
    fake_proc,
    mk_cgroup,
)


def by_container(specs: list[TargetSpec]) -> dict[str | None, TargetSpec]:
    return {s.identity.container_id: s for s in specs}


def test_node_config_errors(kube: KubeClient, tmp_path: Path) -> None:
    root, _ = cgroup_root(tmp_path, 2)
    with pytest.raises(ConfigError, match=r"kubernetes\.node_name: required in node mode"):
        NodeSource.from_config({"source": {"cgroup": {"path": str(root)}}}, kube, environ={})
    with pytest.raises(ConfigError, match=r"source\.cgroup\.path: no such directory"):
        NodeSource.from_config(
            {"source": {"cgroup": {"path": str(tmp_path / "nope")}}},
            kube,
            environ={"NODE_NAME": "n"},
        )
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ConfigError, match=r"source\.cgroup\.path: not a cgroup root"):
        NodeSource.from_config(
            {"source": {"cgroup": {"path": str(plain)}}}, kube, environ={"NODE_NAME": "n"}
        )
    with pytest.raises(ConfigError, match=r"source\.cgroup: expected a mapping"):
        NodeSource.from_config(
            {"source": {"cgroup": "/sys/fs/cgroup"}}, kube, environ={"NODE_NAME": "n"}
        )


def test_sidecar_through_the_shared_pid_namespace_without_api(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    own = tmp_path / "own-cgroup"  # the sidecar's own cgroup namespace view: no kubepods
    mk_cgroup(own, 2, 64 << 20)
    (own / "cgroup.controllers").write_text("memory\n")
    src = SidecarSource.from_config(
        {"source": {"cgroup": {"path": str(own)}, "proc_root": str(proc)}},
        service_account_dir=str(tmp_path / "no-serviceaccount"),
        environ={
            "POD_UID": WEB_UID,
            "POD_NAME": "web-7d4b9c-x2x9q",
            "POD_NAMESPACE": "shop",
            "NODE_NAME": "node-1",
        },
    )
    src.start()
    specs = by_container(src.targets())
    # Without the API the pause container cannot be told apart; the sidecar itself is skipped.
    assert set(specs) == {WEB_APP, WEB_ENVOY, SANDBOX}
    app = specs[WEB_APP]
    assert app.ref is not None
    assert app.ref.path == str(proc / "7" / "root" / "sys" / "fs" / "cgroup")
    assert app.ref.version == 2
    ident = app.identity
    assert (
        ident.namespace,
        ident.pod_name,
        ident.pod_uid,
        ident.container_id,
        ident.node_name,
    ) == ("shop", "web-7d4b9c-x2x9q", WEB_UID, WEB_APP, "node-1")
    envoy = specs[WEB_ENVOY]
    assert envoy.ref is not None
    assert envoy.ref.version == 1
    assert src.status()["discovery"] == "proc"


def test_sidecar_needs_its_pod_uid() -> None:
    with pytest.raises(
        ConfigError, match=r"kubernetes\.pod_uid: required in sidecar mode \(set POD_UID"
    ):
        SidecarSource.from_config({}, None, environ={"POD_NAME": "x"})
