"""What the parts of kill confirmation share: the clock type and the KillSource protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pressured.model import KillRecord

Clock = Callable[[], float]
"""Seconds: time.monotonic for the daemon's clock, time.time for the wall clock."""


class KillSource(Protocol):
    """One open kernel kill reader (kmsg, tracepoint, bcc), as KillSources and the daemon
    loop use it. Opening is each reader's own business; once open, every reader is this."""

    @property
    def name(self) -> str:
        """The source name its records carry (pressured.model.SOURCE_*)."""
        ...

    @property
    def status(self) -> tuple[bool, str]:
        """(active, why): what it reads, or why it reads nothing."""
        ...

    @property
    def poll_interval(self) -> float | None:
        """Seconds between reads when it has no descriptor to wait on; None when ``fds()``
        wake the loop for it."""
        ...

    def fds(self) -> list[int]:
        """Descriptors to register for EPOLLIN; ``read()`` when one is ready. [] once closed."""
        ...

    def read(self) -> list[KillRecord]:
        """Every kill ready now; never blocks."""
        ...

    @property
    def problems(self) -> dict[str, int]:
        """What went wrong since it opened, by kind (counts only grow): records lost before
        they could be read, reads that failed, records that could not be made sense of. A
        kill among them may go unconfirmed by this source (the others may still see it)."""
        ...

    def close(self) -> None: ...
