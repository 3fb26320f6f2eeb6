"""The VM lane: these tests run only inside the pure cgroup v2 guest that scripts/vmtest boots
(it sets VMTEST_GUEST=1). On the host they are skipped: the host's memory controller is on
cgroup v1, so the v2 memory paths can only be exercised in the guest."""

from __future__ import annotations

import os

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
