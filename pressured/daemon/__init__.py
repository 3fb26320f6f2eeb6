"""The daemon: one loop over one epoll set (loop.py), the target table (targets.py) and the
way kill records become `oom_killed` events (kill_pipeline.py)."""

from pressured.daemon.loop import Daemon, protect_self

__all__ = ["Daemon", "protect_self"]
