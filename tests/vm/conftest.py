"""The VM lane: these tests run only inside the pure cgroup v2 guest that scripts/vmtest boots
(it sets VMTEST_GUEST=1). On the host they are skipped: the host's memory controller is on
cgroup v1, so the v2 memory paths can only be exercised in the guest."""

from __future__ import annotations

import os
import subprocess

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("VMTEST_GUEST") == "1":
        return
    skip = pytest.mark.skip(
        reason="VM lane: runs inside scripts/vmtest's cgroup v2 guest (make test-vm)"
    )
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


EXT4_MOUNT = "/run/pressured-vm-mnt"
EXT4_MIB = 512
"""Room for the thrash test's 192 MiB file and the OOM-risk workloads' files side by side."""


def ext4_mount(size_mib: int) -> str:
    """An ext4 filesystem on a loop device, mounted once per guest boot: real page cache that
    is charged to its reader and refaults (tmpfs and 9p pages do neither)."""
    img = "/run/pressured-vm-ext4.img"
    if os.path.ismount(EXT4_MOUNT):
        return EXT4_MOUNT
    subprocess.run(["modprobe", "loop"], check=False)
    os.makedirs(EXT4_MOUNT, exist_ok=True)
    subprocess.run(["truncate", "-s", f"{size_mib}M", img], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
    subprocess.run(["mount", "-o", "loop", img, EXT4_MOUNT], check=True)
    return EXT4_MOUNT
