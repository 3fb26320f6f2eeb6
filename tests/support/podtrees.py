"""Kubelet-shaped cgroup and /proc trees made of plain files under a test's directory, for the
node and sidecar sources' discovery: the systemd driver's kubepods.slice (cgroup v1 or v2) and
a pod's shared PID namespace. The pod UIDs are parameters, so the trees can name pods a real API
server made (tests/k8s_real/test_parts.py) as well as the fixtures' own."""

from __future__ import annotations

from pathlib import Path

WEB_UID = "3f1c2b9e-8a47-4c1e-9d2a-6b5e7f8a9c01"
BATCH_UID = "9b2e4c6a-1f3d-4e5b-8a7c-0d1e2f3a4b5c"
WEB_APP = "a7a1d1b1b26d8785d3cae7a3b8b137b8f08991a2412713846e58baaba5683a4c"
WEB_ENVOY = "e17eb1b6c235111f12bf4d25b4dfc53c6f518f08f07b3343ef1c60c5f81864f4"
BATCH_WORKER = "dd4680cdcd113bcd22342799213fc821b058a12bb38922bea46da3485c799839"
SANDBOX = "5" * 64
SIDECAR = "6" * 64
STRANGER_UID = "0badc0de-0000-4000-8000-000000000001"
STRANGER = "7" * 64


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


def systemd_tree(
    mem: Path, version: int, web_uid: str = WEB_UID, batch_uid: str = BATCH_UID
) -> dict[str, Path]:
    """kubepods.slice with the web pod (burstable: app, envoy, sandbox, conmon), the batch pod
    (guaranteed), a pod unknown to the API, and a BestEffort container without a limit."""
    kp = mk_cgroup(mem / "kubepods.slice", version, None)
    burst = mk_cgroup(kp / "kubepods-burstable.slice", version, None)
    web = mk_cgroup(
        burst / f"kubepods-burstable-pod{web_uid.replace('-', '_')}.slice", version, 400 << 20
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
    batch = mk_cgroup(kp / f"kubepods-pod{batch_uid.replace('-', '_')}.slice", version, 1 << 30)
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


def fake_proc(tmp: Path, web_uid: str = WEB_UID) -> Path:
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
        f"12:pids:/kubepods/burstable/pod{web_uid}/crio-{WEB_ENVOY}\n"
        f"4:memory:/kubepods/burstable/pod{web_uid}/crio-{WEB_ENVOY}",
        1,
        128 << 20,
    )
    process("30", f"0::/../cri-containerd-{SIDECAR}.scope", 2, 64 << 20)
    (proc / "self").symlink_to("30")
    (proc / "99").mkdir()  # a process that exited while we looked: no cgroup file
    return proc
