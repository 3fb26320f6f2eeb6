"""KillSources over the KillSource protocol, with fake sources: what is registered with
epoll, what is polled and how often, what is read, and what an inactive source leaves."""

from __future__ import annotations

from dataclasses import dataclass, field

from pressured.kills import KillsConfig, KillSources
from pressured.model import KillRecord


@dataclass
class FakeSource:
    name: str
    descriptors: list[int] = field(default_factory=list)
    poll_interval: float | None = None
    active: bool = True
    why: str = "a fake"
    records: list[KillRecord] = field(default_factory=list)
    closed: bool = False

    @property
    def status(self) -> tuple[bool, str]:
        return self.active, self.why

    def fds(self) -> list[int]:
        return [] if self.closed else list(self.descriptors)

    def read(self) -> list[KillRecord]:
        out, self.records = self.records, []
        return out

    def close(self) -> None:
        self.closed = True


def not_started() -> KillSources:
    return KillSources(KillsConfig())  # start() is never called: nothing of this host opens


def test_open_sources_are_read_by_name() -> None:
    sources = not_started()
    kmsg = FakeSource("kmsg", [7], records=[KillRecord("kmsg", 1.0, 2.0, pid=4)])
    bcc = FakeSource("bcc", poll_interval=0.5, records=[KillRecord("bcc", 1.0, 2.0, pid=3)])
    assert sources.add(kmsg) and sources.add(bcc)
    assert sources.fds() == [(7, "kmsg")]
    # no fd wakes the loop for bcc: the daemon reads it on every turn, at least every 0.5 s
    assert sources.polled() == ["bcc"]
    assert sources.poll_interval() == 0.5
    assert sources.expected("k") == {"counters", "kmsg", "bcc"}
    assert sources.status()["bcc"] == (True, "a fake")
    assert [r.pid for r in sources.read("bcc")] == [3]
    assert [r.pid for r in sources.read()] == [4]
    sources.close()
    assert kmsg.closed and bcc.closed
    assert sources.fds() == [] and sources.polled() == [] and sources.poll_interval() is None


def test_an_inactive_source_is_closed_and_only_its_reason_kept() -> None:
    sources = not_started()
    probe = FakeSource("bcc", [9], active=False, why="bcc is not importable")
    assert not sources.add(probe)
    assert probe.closed
    assert sources.status()["bcc"] == (False, "bcc is not importable")
    assert sources.fds() == [] and sources.polled() == [] and sources.read() == []
    assert sources.expected("k") == {"counters"}
