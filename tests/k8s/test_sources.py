"""Node and sidecar sources: fake cgroup and proc trees (v1, v2) mapped to pods served by the
fake API server; and, on this host, a real kubepods-shaped cgroup through the engine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pressured.engine import Engine
from pressured.errors import ConfigError
from pressured.k8s.client import KubeClient
from pressured.kernel.cgroupfs import read_memory
from pressured.model import Overrides, Sample
from pressured.sources.base import TargetSpec
from pressured.sources.node import NodeSource
from pressured.sources.sidecar import SidecarSource
from tests.k8s.conftest import pod_named, stop_cache
from tests.k8s.fake_apiserver import FakeKube
from tests.support.cgroups import own_memory_cgroup
from tests.support.wait import wait_for

WEB_UID = "3f1c2b9e-8a47-4c1e-9d2a-6b5e7f8a9c01"
BATCH_UID = "9b2e4c6a-1f3d-4e5b-8a7c-0d1e2f3a4b5c"
WEB_APP = "a7a1d1b1b26d8785d3cae7a3b8b137b8f08991a2412713846e58baaba5683a4c"
WEB_ENVOY = "e17eb1b6c235111f12bf4d25b4dfc53c6f518f08f07b3343ef1c60c5f81864f4"
BATCH_WORKER = "dd4680cdcd113bcd22342799213fc821b058a12bb38922bea46da3485c799839"
SANDBOX = "5" * 64
SIDECAR = "6" * 64
STRANGER_UID = "0badc0de-0000-4000-8000-000000000001"
STRANGER = "7" * 64


# ---------------------------------------------------------------- fake cgroup trees
def mk_cgroup(path: Path, version: int, limit: int | None, usage: int = 4096) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if version == 2:
        (path / "memory.current").write_text(f"{usage}\n")
        (path / "memory.max").write_text(f"{limit}\n" if limit is not None else "max\n")
        (path / "memory.stat").write_text("anon 1024\ninactive_file 0\n")
    else:
        (path / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (path / "memory.limit_in_bytes").write_text(
            f"{limit}\n" if limit is not None else "9223372036854771712\n"
        )
        (path / "memory.stat").write_text("rss 1024\ntotal_inactive_file 0\n")
    return path


def cgroup_root(tmp: Path, version: int) -> tuple[Path, Path]:
    """(the cgroup root to configure, the memory hierarchy directory under it)."""
    root = tmp / "cgroup"
    if version == 2:
        mk_cgroup(root, 2, None)
        (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        return root, root
    mem = mk_cgroup(root / "memory", 1, None)
    return root, mem


def systemd_tree(mem: Path, version: int) -> dict[str, Path]:
    """kubepods.slice with the web pod (burstable: app, envoy, sandbox, conmon), the batch pod
    (guaranteed), a pod unknown to the API, and a BestEffort container without a limit."""
    kp = mk_cgroup(mem / "kubepods.slice", version, None)
    burst = mk_cgroup(kp / "kubepods-burstable.slice", version, None)
    web = mk_cgroup(
        burst / f"kubepods-burstable-pod{WEB_UID.replace('-', '_')}.slice", version, 400 << 20
    )
    paths = {
        "kubepods": kp,
        "burstable": burst,
        "web": web,
        "app": mk_cgroup(web / f"cri-containerd-{WEB_APP}.scope", version, 256 << 20),
        "envoy": mk_cgroup(web / f"cri-containerd-{WEB_ENVOY}.scope", version, 128 << 20),
        "sandbox": mk_cgroup(web / f"cri-containerd-{SANDBOX}.scope", version, 400 << 20),
        "conmon": mk_cgroup(web / f"crio-conmon-{WEB_APP}.scope", version, 64 << 20),
    }
    (web / "run-containerd-rootfs.mount").mkdir()
    batch = mk_cgroup(kp / f"kubepods-pod{BATCH_UID.replace('-', '_')}.slice", version, 1 << 30)
    paths["batch"] = batch
    paths["worker"] = mk_cgroup(batch / f"crio-{BATCH_WORKER}.scope", version, 1 << 30)
    stranger_pod = mk_cgroup(
        burst / f"kubepods-burstable-pod{STRANGER_UID.replace('-', '_')}.slice", version, None
    )
    paths["stranger"] = mk_cgroup(
        stranger_pod / f"cri-containerd-{STRANGER}.scope", version, 64 << 20
    )
    be = mk_cgroup(kp / "kubepods-besteffort.slice", version, None)
    be_pod = mk_cgroup(
        be / "kubepods-besteffort-pod0badc0de_0000_4000_8000_000000000002.slice", version, None
    )
    paths["besteffort"] = mk_cgroup(be_pod / f"cri-containerd-{'8' * 64}.scope", version, None)
    return paths


def by_container(specs: list[TargetSpec]) -> dict[str | None, TargetSpec]:
    return {s.identity.container_id: s for s in specs}


@pytest.fixture
def node_source(
    kube: KubeClient, fake_api: FakeKube, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[NodeSource, dict[str, Path]]]:
    version = request.param
    root, mem = cgroup_root(tmp_path, version)
    paths = systemd_tree(mem, version)
    src = NodeSource.from_config(
        {
            "source": {"mode": "node", "cgroup": {"path": str(root)}},
            "kubernetes": {"node_name": "node-1"},
        },
        kube,
        environ={},
    )
    try:
        yield src, paths
    finally:
        assert src.cache is not None
        stop_cache(src.cache, fake_api)


@pytest.mark.parametrize("node_source", [1, 2], indirect=True, ids=["v1", "v2"])
def test_node_targets_enriched_from_the_pod_cache(
    node_source: tuple[NodeSource, dict[str, Path]], fake_api: FakeKube
) -> None:
    src, paths = node_source
    src.start()
    assert src.changed()
    specs = by_container(src.targets())
    assert not src.changed()
    # Targets: the web pod's two containers, the batch worker and the container of a pod the
    # API does not know (yet). Not: the sandbox, conmon, the mount unit, the unlimited one.
    assert set(specs) == {WEB_APP, WEB_ENVOY, BATCH_WORKER, STRANGER}
    app = specs[WEB_APP]
    assert app.key == str(paths["app"])
    assert app.ref is not None
    assert app.ref.path == str(paths["app"])
    assert app.ref.relpath.startswith("/kubepods.slice/kubepods-burstable.slice/")
    ident = app.identity
    assert (ident.namespace, ident.pod_name, ident.pod_uid, ident.container_name) == (
        "shop",
        "web-7d4b9c-x2x9q",
        WEB_UID,
        "app",
    )
    assert (ident.container_id, ident.node_name, ident.pod_ip) == (WEB_APP, "node-1", "10.244.1.17")
    assert app.overrides == Overrides(warn_percent=60.0)
    assert app.annotations["pressured.io/pprof-enabled"] == "true"
    assert specs[WEB_ENVOY].identity.container_name == "envoy"
    worker = specs[BATCH_WORKER]
    assert worker.identity.container_name == "worker"
    assert worker.overrides == Overrides()  # "ninety" is not a percentage: the default
    stranger = specs[STRANGER].identity
    assert (stranger.pod_uid, stranger.container_id, stranger.node_name, stranger.pod_name) == (
        STRANGER_UID,
        STRANGER,
        "node-1",
        None,
    )
    status = src.status()
    assert (status["unlimited"], status["not_in_pod"], status["unknown_pod"]) == (1, 1, 1)
    dirs = set(src.watch_dirs())
    assert {
        str(paths["kubepods"]),
        str(paths["burstable"]),
        str(paths["web"]),
        str(paths["batch"]),
    } <= dirs
    assert str(paths["app"]) not in dirs


@pytest.mark.parametrize("node_source", [2], indirect=True, ids=["v2"])
def test_bad_annotation_warns_once_with_an_event(
    node_source: tuple[NodeSource, dict[str, Path]],
    fake_api: FakeKube,
    caplog: pytest.LogCaptureFixture,
) -> None:
    src, _ = node_source
    src.start()
    src.targets()
    src.targets()
    posted = [e for e in fake_api.events.values() if e["reason"] == "InvalidPressuredAnnotation"]
    assert len(posted) == 1
    assert posted[0]["involvedObject"]["name"] == "batch-worker-0"
    assert posted[0]["type"] == "Warning"
    assert "pressured.io/critical-percent='ninety' ignored: not a number" in posted[0]["message"]
    assert "jobs/batch-worker-0: annotation pressured.io/critical-percent" in caplog.text


@pytest.mark.parametrize("node_source", [2], indirect=True, ids=["v2"])
def test_pod_changes_mark_the_source_changed(
    node_source: tuple[NodeSource, dict[str, Path]], fake_api: FakeKube
) -> None:
    src, paths = node_source
    src.start()
    src.targets()
    assert not src.changed()

    def retune(pod: dict[str, Any]) -> None:
        pod["metadata"]["annotations"]["pressured.io/warn-percent"] = "45"
        pod["metadata"]["annotations"]["pressured.io/cooldown-seconds"] = "600"

    fake_api.modify_pod(WEB_UID, retune)
    wait_for(src.changed, what="the source to be marked changed")
    app = by_container(src.targets())[WEB_APP]
    assert app.overrides == Overrides(warn_percent=45.0, cooldown_seconds=600.0)

    # The unknown pod shows up in the API: its container gets the full identity.
    stranger = pod_named("web-7d4b9c-x2x9q")
    stranger["metadata"].update(name="newcomer-0", uid=STRANGER_UID, annotations={})
    stranger["spec"]["containers"] = stranger["spec"]["containers"][:1]
    stranger["status"]["containerStatuses"] = [
        {
            "name": "app",
            "containerID": f"containerd://{STRANGER}",
            "restartCount": 0,
            "ready": True,
            "image": "x",
            "imageID": "y",
            "state": {"running": {}},
        }
    ]
    fake_api.add_pod(stranger)
    wait_for(src.changed, what="the source to be marked changed")
    assert by_container(src.targets())[STRANGER].identity.pod_name == "newcomer-0"

    # A new container cgroup is noticed through the directory watch (the daemon's inotify).
    mk_cgroup(paths["web"] / f"cri-containerd-{'9' * 64}.scope", 2, 64 << 20)
    src.notify_fs_change()
    assert src.changed()
    assert "9" * 64 not in by_container(
        src.targets()
    )  # the pod is known, the container not: skipped


def test_cgroupfs_driver_v1_tree(kube: KubeClient, fake_api: FakeKube, tmp_path: Path) -> None:
    root, mem = cgroup_root(tmp_path, 1)
    kp = mk_cgroup(mem / "kubepods", 1, None)
    pod = mk_cgroup(mk_cgroup(kp / "burstable", 1, None) / f"pod{WEB_UID}", 1, None)
    mk_cgroup(pod / WEB_APP, 1, 256 << 20)
    mk_cgroup(pod / f"crio-{WEB_ENVOY}", 1, 128 << 20)
    src = NodeSource(kube=kube, node_name="node-1", cgroup_path=str(root))
    try:
        src.start()
        specs = by_container(src.targets())
        assert {k: s.identity.container_name for k, s in specs.items()} == {
            WEB_APP: "app",
            WEB_ENVOY: "envoy",
        }
    finally:
        assert src.cache is not None
        stop_cache(src.cache, fake_api)


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


# ---------------------------------------------------------------- sidecar
def fake_proc(tmp: Path) -> Path:
    """A pod's shared PID namespace: pause (pid 1), the app (pids 7, 8; containerd, seen through
    a cgroup namespace, v2), envoy (pid 12; CRI-O, v1 without a cgroup namespace), and us."""
    proc = tmp / "proc"

    def process(pid: str, cgroup_line: str, version: int, limit: int | None) -> None:
        d = proc / pid
        d.mkdir(parents=True)
        (d / "cgroup").write_text(cgroup_line + "\n")
        mount = d / "root" / "sys" / "fs" / "cgroup"
        if version == 2:
            mk_cgroup(mount, 2, limit)
            (mount / "cgroup.controllers").write_text("cpu memory pids\n")
        else:
            mk_cgroup(mount / "memory", 1, limit)

    process("1", f"0::/../cri-containerd-{SANDBOX}.scope", 2, 400 << 20)
    process("7", f"0::/../cri-containerd-{WEB_APP}.scope", 2, 256 << 20)
    process("8", f"0::/../cri-containerd-{WEB_APP}.scope", 2, 256 << 20)
    process(
        "12",
        f"12:pids:/kubepods/burstable/pod{WEB_UID}/crio-{WEB_ENVOY}\n"
        f"4:memory:/kubepods/burstable/pod{WEB_UID}/crio-{WEB_ENVOY}",
        1,
        128 << 20,
    )
    process("30", f"0::/../cri-containerd-{SIDECAR}.scope", 2, 64 << 20)
    (proc / "self").symlink_to("30")
    (proc / "99").mkdir()  # a process that exited while we looked: no cgroup file
    return proc


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


def test_sidecar_with_api_names_containers_and_skips_the_sandbox(
    kube: KubeClient, fake_api: FakeKube, tmp_path: Path
) -> None:
    proc = fake_proc(tmp_path)
    src = SidecarSource(
        pod_uid=WEB_UID,
        pod_name="web-7d4b9c-x2x9q",
        pod_namespace="shop",
        kube=kube,
        cgroup_path=str(tmp_path / "proc"),
        proc_root=str(proc),
        discovery="proc",
    )
    try:
        src.start()
        specs = by_container(src.targets())
        assert {k: s.identity.container_name for k, s in specs.items()} == {
            WEB_APP: "app",
            WEB_ENVOY: "envoy",
        }
        assert specs[WEB_APP].overrides.warn_percent == 60.0
        req = fake_api.requests_to("GET", "/api/v1/namespaces/shop/pods")[0]
        assert req.query["fieldSelector"] == "metadata.name=web-7d4b9c-x2x9q"
    finally:
        assert src.cache is not None
        stop_cache(src.cache, fake_api)


def test_sidecar_through_a_hostpath_cgroup_mount(
    kube: KubeClient, fake_api: FakeKube, tmp_path: Path
) -> None:
    root, mem = cgroup_root(tmp_path, 2)
    paths = systemd_tree(mem, 2)
    mk_cgroup(paths["web"] / f"cri-containerd-{SIDECAR}.scope", 2, 64 << 20)
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(f"0::/../cri-containerd-{SIDECAR}.scope\n")
    src = SidecarSource(
        pod_uid=WEB_UID,
        pod_name="web-7d4b9c-x2x9q",
        pod_namespace="shop",
        kube=kube,
        cgroup_path=str(root),
        proc_root=str(proc),
    )
    try:
        src.start()
        specs = by_container(src.targets())
        assert {k: s.identity.container_name for k, s in specs.items()} == {
            WEB_APP: "app",
            WEB_ENVOY: "envoy",
        }
        assert specs[WEB_APP].key == str(paths["app"])
        assert src.watch_dirs() == [str(paths["web"])]
        assert src.status()["discovery"] == "cgroupfs"
    finally:
        assert src.cache is not None
        stop_cache(src.cache, fake_api)


def test_sidecar_without_api_access_still_watches(
    kube: KubeClient, fake_api: FakeKube, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_api.forced[("GET", "/api/v1/namespaces/shop/pods")] = 403
    proc = fake_proc(tmp_path)
    src = SidecarSource(
        pod_uid=WEB_UID,
        pod_name="web-7d4b9c-x2x9q",
        pod_namespace="shop",
        kube=kube,
        proc_root=str(proc),
        discovery="proc",
    )
    src.start()
    assert WEB_APP in by_container(src.targets())
    assert "not readable through the API" in caplog.text
    src.close()


def test_sidecar_needs_its_pod_uid() -> None:
    with pytest.raises(
        ConfigError, match=r"kubernetes\.pod_uid: required in sidecar mode \(set POD_UID"
    ):
        SidecarSource.from_config({}, None, environ={"POD_NAME": "x"})


# ---------------------------------------------------------------- this host, real cgroups
HOLDER = """
import os, sys, time
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
b = bytearray(16 << 20)
for i in range(0, len(b), 4096):
    b[i] = 1
print("ok", flush=True)
time.sleep(60)
"""


@pytest.fixture
def kubepods_cgroup() -> Iterator[tuple[Path, Path]]:
    """<base>/kubepods/burstable/pod<uid>/<id> with a 64 MiB limit, under this process's own
    v1 memory cgroup (the hybrid host) or under the v2 root with the memory controller
    delegated down each level (the v2 guest). Removed afterwards, with whatever runs in it,
    even on failure."""
    own, why = own_memory_cgroup()
    if own is None:
        pytest.skip(f"no writable memory cgroup here: {why}")
    v2 = os.path.exists(os.path.join(own, "cgroup.controllers"))
    base = Path(own) / f"pressured-k8s-{os.getpid()}"
    container = base / "kubepods" / "burstable" / f"pod{WEB_UID}" / WEB_APP
    made: list[Path] = []
    try:
        for path in (
            base,
            base / "kubepods",
            base / "kubepods" / "burstable",
            base / "kubepods" / "burstable" / f"pod{WEB_UID}",
            container,
        ):
            path.mkdir()
            made.append(path)
            if v2 and path != container:
                # v2: a child has memory files only if its parent delegates the controller.
                (path / "cgroup.subtree_control").write_text("+memory")
        (container / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(64 << 20))
        yield base, container
    finally:
        for d in reversed(made):
            _empty_and_remove(d)


def _empty_and_remove(path: Path) -> None:
    for _ in range(100):
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


@pytest.mark.kernel
def test_node_mode_on_a_real_cgroup_through_the_engine(
    kubepods_cgroup: tuple[Path, Path], kube: KubeClient, fake_api: FakeKube
) -> None:
    base, container = kubepods_cgroup

    def tune(pod: dict[str, Any]) -> None:
        pod["metadata"]["annotations"]["pressured.io/warn-percent"] = "5"

    fake_api.modify_pod(WEB_UID, tune)
    # A real process that moves itself into the container cgroup, then holds ~16 MiB.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(container / "cgroup.procs")], stdout=subprocess.PIPE
    )
    src = NodeSource(kube=kube, node_name="node-1", cgroup_path=str(base))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"ok"
        src.start()
        (spec,) = src.targets()
        assert spec.ref is not None
        assert spec.ref.path == str(container)
        assert spec.ref.version == (2 if (base / "cgroup.controllers").exists() else 1)
        ident = spec.identity
        assert (
            ident.namespace,
            ident.pod_name,
            ident.pod_uid,
            ident.container_name,
            ident.container_id,
        ) == ("shop", "web-7d4b9c-x2x9q", WEB_UID, "app", WEB_APP)
        assert spec.overrides.warn_percent == 5.0
        assert str(base / "kubepods" / "burstable" / f"pod{WEB_UID}") in src.watch_dirs()

        reading = read_memory(spec.ref)
        assert reading.limit_bytes == 64 << 20
        assert reading.usage_bytes > 16 << 20
        sample = Sample(
            spec.key, 10.0, reading.usage_bytes, reading.working_set_bytes, reading.limit_bytes
        )
        engine = Engine()
        events = engine.feed(
            sample,
            10.0,
            time.time(),
            cgroup=spec.ref.relpath,
            identity=spec.identity,
            annotations=dict(spec.annotations),
            overrides=Overrides(
                spec.overrides.warn_percent,
                spec.overrides.critical_percent,
                spec.overrides.cooldown_seconds,
            ),
        )
        (event,) = events
        assert event.severity == "warn"
        out = event.to_json()
        assert (
            out["namespace"],
            out["pod_name"],
            out["pod_uid"],
            out["container_name"],
            out["node_name"],
            out["pod_ip"],
        ) == ("shop", "web-7d4b9c-x2x9q", WEB_UID, "app", "node-1", "10.244.1.17")
        assert out["cgroup"].endswith(f"/kubepods/burstable/pod{WEB_UID}/{WEB_APP}")
        assert out["annotations"]["pressured.io/warn-percent"] == "5"
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
        assert src.cache is not None
        stop_cache(src.cache, fake_api)


def test_sources_build_and_own_their_client(
    kubeconfig: Path, fake_api: FakeKube, tmp_path: Path
) -> None:
    root, mem = cgroup_root(tmp_path, 2)
    systemd_tree(mem, 2)
    cfg: dict[str, Any] = {
        "source": {"cgroup": {"path": str(root)}},
        "kubernetes": {"kubeconfig": str(kubeconfig), "node_name": "node-1"},
    }
    node = NodeSource.from_config(cfg, environ={})
    assert node.kube is not None
    node.start()
    assert WEB_APP in by_container(node.targets())
    assert node.cache is not None
    stop_cache(node.cache, fake_api)
    node.close()
    assert node.kube.closed

    cfg["kubernetes"].update(pod_uid=WEB_UID, pod_name="web-7d4b9c-x2x9q", pod_namespace="shop")
    sidecar = SidecarSource.from_config(cfg, environ={})
    assert sidecar.kube is not None
    sidecar.start()
    assert {s.identity.container_name for s in sidecar.targets()} == {"app", "envoy"}
    assert sidecar.cache is not None
    stop_cache(sidecar.cache, fake_api)
    sidecar.close()
    assert sidecar.kube.closed


@pytest.mark.parametrize("node_source", [2], indirect=True, ids=["v2"])
def test_status_only_updates_do_not_rescan(
    node_source: tuple[NodeSource, dict[str, Path]], fake_api: FakeKube
) -> None:
    src, _ = node_source
    src.start()
    src.targets()
    assert src.cache is not None
    generation = src.cache.generation

    def not_ready(pod: dict[str, Any]) -> None:
        pod["status"]["containerStatuses"][0]["ready"] = False

    fake_api.modify_pod(WEB_UID, not_ready)
    wait_for(lambda: src.cache is not None and src.cache.generation > generation, what="MODIFIED")
    assert not src.changed()


@pytest.mark.kernel
def test_node_mode_daemon_end_to_end(
    kubepods_cgroup: tuple[Path, Path],
    kubeconfig: Path,
    fake_api: FakeKube,
    tmp_path: Path,
) -> None:
    """The real daemon in node mode: a process in a kubepods-shaped cgroup on this host, the
    pod served by the fake API; the event carries the pod's identity, and a k8s-event action
    posts a MemoryPressureWarning Event on that pod."""
    from pressured import config as config_mod
    from pressured.daemon import Daemon

    base, container = kubepods_cgroup

    def tune(pod: dict[str, Any]) -> None:
        pod["metadata"]["annotations"]["pressured.io/warn-percent"] = "5"

    fake_api.modify_pod(WEB_UID, tune)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(container / "cgroup.procs")], stdout=subprocess.PIPE
    )
    events = tmp_path / "events.jsonl"
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"ok"
        cfg = config_mod.load(
            None,
            env={},
            flags={
                "source.mode": "node",
                "source.cgroup.path": str(base),
                "kubernetes.node_name": "node-1",
                "kubernetes.kubeconfig": str(kubeconfig),
                "metrics.enabled": False,
                "events_out": str(events),
                "thresholds.metric": "usage",
            },
        )
        cfg.data["actions"] = [{"type": "log"}, {"type": "k8s-event"}]
        cfg.data["kills"] = {"kmsg": {"enabled": False}, "tracepoint": {"enabled": False}}
        Daemon(cfg).run(run_for=3.0)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    docs = [json.loads(x) for x in events.read_text().splitlines()]
    warn = next(d for d in docs if d.get("severity") == "warn")
    assert (warn["namespace"], warn["pod_name"], warn["pod_uid"], warn["container_name"]) == (
        "shop",
        "web-7d4b9c-x2x9q",
        WEB_UID,
        "app",
    )
    assert warn["node_name"] == "node-1" and warn["pod_ip"] == "10.244.1.17"
    assert warn["cgroup"] == str(container)
    posted = [e for e in fake_api.events.values() if e.get("reason") == "MemoryPressureWarning"]
    assert posted, fake_api.events
    assert posted[0]["involvedObject"]["uid"] == WEB_UID
