"""Identity from kubelet cgroup paths: every driver x runtime x QoS class, plus junk."""

from __future__ import annotations

import itertools

import pytest

from pressured.k8s.identity import (
    PodCgroup,
    parse_cgroup_path,
    parse_container_dir,
    pod_uid_forms,
    split_container_id,
)

UID = "3f1c2b9e-8a47-4c1e-9d2a-6b5e7f8a9c01"
UID_SYSTEMD = UID.replace("-", "_")
CID = "a7a1d1b1b26d8785d3cae7a3b8b137b8f08991a2412713846e58baaba5683a4c"
CUUID = "15aa6e53-b09a-40c7-8558-c6c31e36c88a"  # a UUID-shaped container id
STATIC_UID = "6f5e4d3c2b1a09f8e7d6c5b4a3928170"  # a static pod's config hash

RUNTIMES = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}
QOS = ("guaranteed", "burstable", "besteffort")


def systemd_path(qos: str, runtime: str, uid: str = UID_SYSTEMD, prefix: str = "") -> str:
    top = f"{prefix}kubepods.slice"
    if qos == "guaranteed":
        pod = f"{top}/{prefix}kubepods-pod{uid}.slice"
    else:
        pod = f"{top}/{prefix}kubepods-{qos}.slice/{prefix}kubepods-{qos}-pod{uid}.slice"
    return f"/{pod}/{RUNTIMES[runtime]}-{CID}.scope"


def cgroupfs_path(qos: str, container_dir: str, uid: str = UID) -> str:
    level = "" if qos == "guaranteed" else f"{qos}/"
    return f"/kubepods/{level}pod{uid}/{container_dir}"


@pytest.mark.parametrize(("qos", "runtime"), list(itertools.product(QOS, RUNTIMES)))
def test_systemd_driver(qos: str, runtime: str) -> None:
    got = parse_cgroup_path(systemd_path(qos, runtime))
    assert got == PodCgroup(UID, qos, "systemd", CID, runtime)  # type: ignore[arg-type]
    assert got is not None
    assert not got.is_pod_level


@pytest.mark.parametrize(("qos", "runtime"), list(itertools.product(QOS, RUNTIMES)))
def test_cgroupfs_driver_with_runtime_prefix(qos: str, runtime: str) -> None:
    got = parse_cgroup_path(cgroupfs_path(qos, f"{RUNTIMES[runtime]}-{CID}"))
    assert got == PodCgroup(UID, qos, "cgroupfs", CID, runtime)  # type: ignore[arg-type]


@pytest.mark.parametrize("qos", QOS)
def test_cgroupfs_driver_bare_id_has_no_runtime(qos: str) -> None:
    # containerd and docker under the cgroupfs driver name the directory by the bare id.
    got = parse_cgroup_path(cgroupfs_path(qos, CID))
    assert got == PodCgroup(UID, qos, "cgroupfs", CID, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("qos", QOS)
def test_pod_level_cgroups(qos: str) -> None:
    systemd = systemd_path(qos, "containerd").rsplit("/", 1)[0]
    cgroupfs = cgroupfs_path(qos, "x").rsplit("/", 1)[0]
    for path, driver in ((systemd, "systemd"), (cgroupfs, "cgroupfs")):
        got = parse_cgroup_path(path)
        assert got == PodCgroup(UID, qos, driver)  # type: ignore[arg-type]
        assert got is not None
        assert got.is_pod_level
        assert got.container_id is None


@pytest.mark.parametrize(
    "prefix",
    [
        "/sys/fs/cgroup",  # v2
        "/sys/fs/cgroup/memory",  # v1 / hybrid memory hierarchy
        "/host/sys/fs/cgroup/memory",  # a hostPath mount in a sidecar
    ],
)
def test_full_filesystem_paths(prefix: str) -> None:
    got = parse_cgroup_path(prefix + systemd_path("burstable", "cri-o"))
    assert got == PodCgroup(UID, "burstable", "systemd", CID, "cri-o")
    got = parse_cgroup_path(prefix + cgroupfs_path("besteffort", CID))
    assert got == PodCgroup(UID, "besteffort", "cgroupfs", CID, None)


def test_kubelet_with_cgroup_root_prefix_kind() -> None:
    # kind runs the kubelet with --cgroup-root=/kubelet: slice names gain a "kubelet-" prefix.
    path = "/kubelet.slice/kubelet-kubepods.slice" + systemd_path(
        "burstable", "containerd", prefix="kubelet-"
    ).removeprefix("/kubelet-kubepods.slice")
    assert parse_cgroup_path(path) == PodCgroup(UID, "burstable", "systemd", CID, "containerd")
    guaranteed = f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_SYSTEMD}.slice"
    assert parse_cgroup_path(guaranteed) == PodCgroup(UID, "guaranteed", "systemd")


def test_static_pod_uid_is_a_hash() -> None:
    got = parse_cgroup_path(cgroupfs_path("guaranteed", CID, uid=STATIC_UID))
    assert got is not None
    assert got.pod_uid == STATIC_UID
    got = parse_cgroup_path(systemd_path("burstable", "containerd", uid=STATIC_UID))
    assert got is not None
    assert got.pod_uid == STATIC_UID


def test_cgroupfs_uid_keeps_dashes_and_systemd_uid_is_unescaped() -> None:
    a = parse_cgroup_path(cgroupfs_path("burstable", CID))
    b = parse_cgroup_path(systemd_path("burstable", "containerd"))
    assert a is not None
    assert b is not None
    assert a.pod_uid == b.pod_uid == UID


JUNK = [
    "",
    "/",
    "/kubepods",
    "/kubepods/burstable",
    "/kubepods.slice",
    "/kubepods.slice/kubepods-burstable.slice",
    "/system.slice/containerd.service",
    "/user.slice/user-1000.slice/session-3.scope",
    "/init.scope",
    f"/docker/{CID}",  # plain docker, not under the kubelet
    # systemd mount units under a QoS slice, outside any pod slice.
    f"/kubepods.slice/kubepods-burstable.slice/var-lib-kubelet-pods-{UID}.mount",
    # malformed uids and QoS levels: no pod is named
    f"/kubepods/burstable/pod-not-a-uid/{CID}",
    f"/kubepods/burstable/pod{UID[:-2]}/{CID}",
    f"/kubepods/burstable/pod{UID.upper()}/{CID}",
    f"/kubepods/gold/pod{UID}/{CID}",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD[:-1]}.slice",
    # a pod slice under the wrong QoS slice
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice",
    f"/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/../{CID}",
    f"/kubepods/pod{UID}/../{CID}",
    f"/kubepods/burstable/pod{UID}/{CID}/../..",
    # the kubepods parents themselves, nested or prefixed
    "/kubepods/kubepods",
    "/kubepods/kubepods/besteffort",
    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice",
    "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice",
    # system services and user slices
    "/system.slice/kubelet.service",
    f"/system.slice/containerd.service/{CID}",
    f"/system.slice/docker-{CID}.scope",
    "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope",
    # a pod-shaped directory outside the kubelet's tree
    f"/pod{UID}/{CID}",
    f"pod{UID}/{CID}",
    f"/machine.slice/pod{UID}/{CID}",
    f"/docker/{CID}/burstable/pod{UID}",
]


@pytest.mark.parametrize("path", JUNK)
def test_junk_paths_are_not_identities(path: str) -> None:
    assert parse_cgroup_path(path) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"cri-containerd-{CID}.scope", (CID, "containerd")),
        (f"crio-{CID}.scope", (CID, "cri-o")),
        (f"docker-{CID}.scope", (CID, "docker")),
        (f"crio-{CID}", (CID, "cri-o")),
        (CID, (CID, None)),
        (f"cri-containerd-{CID}", (CID, "containerd")),
        (CUUID, (CUUID, None)),
        (f"kubepods-burstable-pod{UID_SYSTEMD}.slice:cri-containerd:{CID}", (CID, "containerd")),
        (f"kubepods-burstable-pod{UID_SYSTEMD}.slice", None),
        (f"crio-conmon-{CID}.scope", None),
        ("container", None),
        ("", None),
    ],
)
def test_parse_container_dir(name: str, expected: tuple[str, str | None] | None) -> None:
    assert parse_container_dir(name) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (f"containerd://{CID}", (CID, "containerd")),
        (f"cri-o://{CID}", (CID, "cri-o")),
        (f"docker://{CID}", (CID, "docker")),
        (f"rkt://{CID}", (CID, None)),
        (CID, (CID, None)),
    ],
)
def test_split_container_id(raw: str, expected: tuple[str, str | None]) -> None:
    assert split_container_id(raw) == expected


def test_pod_uid_forms() -> None:
    assert pod_uid_forms(UID) == (UID, UID_SYSTEMD)
    assert pod_uid_forms(UID_SYSTEMD) == (UID, UID_SYSTEMD)


BURSTABLE_SLICE = (
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice"
)
BESTEFFORT_SLICE = f"kubepods-besteffort-pod{UID_SYSTEMD}.slice"


def ident(
    qos: str | None, driver: str, cid: str | None = None, runtime: str | None = None
) -> PodCgroup:
    return PodCgroup(UID, qos, driver, cid, runtime)  # type: ignore[arg-type]


# Shapes beyond the plain driver x runtime layouts: (path, what it names).
SHAPES = [
    # the kubepods component twice (a kubelet nested in a kubelet's cgroupfs tree)
    (f"/kubepods/kubepods/besteffort/pod{UID}/{CID}", ident("besteffort", "cgroupfs", CID)),
    (f"/kubepods/kubepods/pod{UID}", ident("guaranteed", "cgroupfs")),
    (
        f"/kubepods.slice/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/docker-{CID}.scope",
        ident("guaranteed", "systemd", CID, "docker"),
    ),
    # a sub-cgroup inside a container: crun's "container" leaf (cgroup v2), a process's own
    (
        f"{BURSTABLE_SLICE}/crio-{CID}.scope/container",
        ident("burstable", "systemd", CID, "cri-o"),
    ),
    (
        f"/sys/fs/cgroup{BURSTABLE_SLICE}/cri-containerd-{CID}.scope/init.scope",
        ident("burstable", "systemd", CID, "containerd"),
    ),
    (f"/kubepods/besteffort/pod{UID}/{CID}/kube-proxy", ident("besteffort", "cgroupfs", CID)),
    (f"/kubepods/pod{UID}/crio-{CID}/container/a/b", ident("guaranteed", "cgroupfs", CID, "cri-o")),
    # containerd's slice:prefix:id cgroupsPath placed literally under containerd.service
    (
        f"/system.slice/containerd.service/kubepods-burstable-pod{UID_SYSTEMD}.slice"
        f":cri-containerd:{CID}",
        ident("burstable", "systemd", CID, "containerd"),
    ),
    (
        f"/system.slice/containerd.service/kubepods-pod{UID_SYSTEMD}.slice:cri-containerd:{CID}",
        ident("guaranteed", "systemd", CID, "containerd"),
    ),
    (
        f"/sys/fs/cgroup/memory/system.slice/containerd.service/{BESTEFFORT_SLICE}"
        f":cri-containerd:{CID}/sub",
        ident("besteffort", "systemd", CID, "containerd"),
    ),
    # a UUID-shaped container id
    (f"/kubepods/besteffort/pod{UID}/{CUUID}", ident("besteffort", "cgroupfs", CUUID)),
    (f"{BURSTABLE_SLICE}/crio-{CUUID}.scope", ident("burstable", "systemd", CUUID, "cri-o")),
    # cri-containerd-<id> without .scope; crio-<id>.scope under the cgroupfs driver
    (
        f"{BURSTABLE_SLICE}/cri-containerd-{CID}",
        ident("burstable", "systemd", CID, "containerd"),
    ),
    (f"/kubepods/pod{UID}/crio-{CID}.scope", ident("guaranteed", "cgroupfs", CID, "cri-o")),
    (
        f"/kubepods/burstable/pod{UID}/docker-{CID}.scope",
        ident("burstable", "cgroupfs", CID, "docker"),
    ),
    # read inside a cgroup namespace: the systemd slice name still says the QoS class
    (
        f"/../../{BESTEFFORT_SLICE}/docker-{CID}.scope",
        ident("besteffort", "systemd", CID, "docker"),
    ),
    (f"/../kubepods-pod{UID_SYSTEMD}.slice", ident("guaranteed", "systemd")),
    (f"/../../pod{UID}/{CID}", ident(None, "cgroupfs", CID)),
    (f"/../burstable/pod{UID}/crio-{CID}", ident("burstable", "cgroupfs", CID, "cri-o")),
    # the pod is named, the rest is no container: the pod alone
    (f"{BURSTABLE_SLICE}/crio-conmon-{CID}.scope", ident("burstable", "systemd")),
    (f"/kubepods/burstable/pod{UID}/crio-conmon-{CID}", ident("burstable", "cgroupfs")),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/{BESTEFFORT_SLICE}/"
        "run-containerd-io.containerd.runtime.v2.task-k8s.io-abc-rootfs.mount",
        ident("besteffort", "systemd"),
    ),
    (f"{BURSTABLE_SLICE}/runc-{CID}.scope", ident("burstable", "systemd")),
    (f"/kubepods/burstable/pod{UID}/{CID[:-1]}", ident("burstable", "cgroupfs")),
    (f"/kubepods/burstable/pod{UID}/{CID}z", ident("burstable", "cgroupfs")),
    (f"/kubepods/burstable/pod{UID}/{CID.upper()}", ident("burstable", "cgroupfs")),
    (f"/kubepods/burstable/pod{UID}/{CID}.scope", ident("burstable", "cgroupfs")),
    (f"/kubepods/burstable/pod{UID}/nested/{CID}", ident("burstable", "cgroupfs")),
]


@pytest.mark.parametrize(("path", "expected"), SHAPES)
def test_more_shapes(path: str, expected: PodCgroup) -> None:
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize(
    ("path", "expected"), [s for s in SHAPES if not s[0].startswith(("/..", "/sys"))]
)
def test_shapes_keep_their_identity_with_a_filesystem_prefix(
    path: str, expected: PodCgroup
) -> None:
    assert parse_cgroup_path("/sys/fs/cgroup/memory" + path) == expected
