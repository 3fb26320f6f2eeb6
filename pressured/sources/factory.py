"""The source a configuration asks for (``source.mode``): the daemon and `pressured diagnose`
build theirs here. A mode's module is imported only when that mode is chosen."""

from __future__ import annotations

from pressured.config import Config
from pressured.sources.base import Source


def make_source(cfg: Config) -> Source:
    mode = cfg.mode
    if mode == "local":
        from pressured.sources.local import LocalSource  # noqa: PLC0415

        return LocalSource(cfg.get("source.cgroup.path"), cfg.get("source.cgroup.paths") or [])
    if mode == "node":
        from pressured.sources.node import NodeSource  # noqa: PLC0415

        return NodeSource.from_config(cfg.data)
    if mode == "sidecar":
        from pressured.sources.sidecar import SidecarSource  # noqa: PLC0415

        return SidecarSource.from_config(cfg.data)
    from pressured.sources.cluster import ClusterSource  # noqa: PLC0415

    return ClusterSource.from_config(cfg.data)
