"""A local spool in front of a remote backend, so an outage of S3 loses nothing.

Every write is streamed first into the spool directory (constant memory, one local file), then
committed: the data file is renamed into place and a small JSON ``.meta`` beside it records the
key and the destination (for S3: bucket, prefix, endpoint, and the region and addressing style
used to reach them). Only a committed entry is uploaded, by streaming the file to its
destination; the entry is deleted once the destination has accepted it. If the upload fails,
``close()`` still succeeds (the bytes are on local disk) and a daemon thread retries with
exponential backoff and jitter.
A new instance over the same directory finds the committed entries and uploads them, so a
restart during an outage loses nothing either.

An entry goes where it was meant to go when it was written, not wherever the configuration
points now: after a change of bucket, prefix or endpoint, the entries spooled for the old one are
delivered there through a backend built from the recorded destination (``opener``), checked as a
configuration would be. One that cannot be built (a type this version does not know, values
that no longer pass the checks) is kept on disk and reported on every retry, never sent to the
new destination: a capture in the wrong bucket may be readable by people who were not meant to
read it, while a kept one is only late. An entry of the first spool format, which recorded no
destination, goes to the current primary (the only destination known for it). Entries are
retried, backed off and held back per destination, so an old destination that stays away does
not hold up the current one.

Spool layout (one flat directory, names sort by creation time)::

    <id>.part        a write in progress; deleted at start (the writer never committed it)
    <id>.data        committed bytes
    <id>.meta        {"version": 2, "key": ..., "size": ..., "created": <unix time>,
                      "destination": {"type": "s3", "where": {...}, "how": {...}} or null}
    .lock            flock(2) so two daemons never upload and delete the same entries

At most one entry per key and destination is kept: committing a newer write supersedes the older
entry, and uploads are serialized, so an older version never lands after a newer one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pressured.errors import StorageError, quote
from pressured.storage.base import Destination, Storage, Writer, validate_key
from pressured.storage.fsio import create_exclusive, discard, fsync_dir, make_dirs, write_all

log = logging.getLogger("pressured.storage.spool")

DEFAULT_SPOOL_DIR = "/var/lib/pressured/spool"
DEFAULT_MAX_BYTES = 1 << 30
CHUNK_SIZE = 1024 * 1024
META_VERSION = 2
_META_VERSIONS = (1, 2)  # 1 recorded no destination
# Failures the primary may raise when the remote end is away; anything else is a bug, logged
# with its traceback, and still retried (the bytes are safe in the spool either way).
_EXPECTED = (StorageError, OSError)


class _NoBackend(StorageError):
    """No backend can be built for an entry's recorded destination (reported as an error)."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits ``initial * multiplier**(n-1)``, capped
    at ``max``, minus a random share of up to ``jitter`` of it so that many daemons that lost
    the same endpoint do not come back in lockstep (AWS Architecture Blog, "Exponential Backoff
    And Jitter")."""

    initial: float = 1.0
    max: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        exponent = min(max(attempt - 1, 0), 64)  # 2.0**1024 overflows a float
        base = min(self.max, self.initial * self.multiplier**exponent)
        return base * (1.0 - self.jitter * rng.random())


@dataclass
class _Entry:
    id: str
    key: str
    size: int
    created: float
    dest: Destination | None = None
    """As recorded; None when the writer could not describe it (or an old spool format)."""
    route: str = ""
    """The destination the entry is kept, retried and held back under (``Destination.id``)."""
    attempts: int = 0
    due: float = 0.0
    busy: bool = False

    @property
    def slot(self) -> tuple[str, str]:
        return (self.route, self.key)


class SpoolWriter(Writer):
    """Streams into ``<id>.part``; ``close`` commits the entry and tries the primary once."""

    def __init__(self, spool: SpoolingStorage, key: str) -> None:
        self._spool = spool
        self._key = key
        self._id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        self._part = spool.spool_dir / f"{self._id}.part"
        self._written = 0
        self._done = False
        try:
            self._fd = create_exclusive(self._part)
        except OSError as exc:
            raise spool._error(f"cannot create {self._part}", key, exc) from exc

    def write(self, data: bytes) -> int:
        if self._done:
            raise StorageError(f"spool: write to a closed writer for key {quote(self._key)}")
        try:
            self._spool._reserve(self._key, len(data))
        except StorageError:
            self.abort()
            raise
        self._written += len(data)
        try:
            write_all(self._fd, data)
        except OSError as exc:
            self.abort()
            raise self._spool._error(f"cannot write {self._part}", self._key, exc) from exc
        return len(data)

    def close(self) -> None:
        if self._done:
            return
        spool = self._spool
        entry = _Entry(
            self._id, self._key, self._written, time.time(), spool._home, spool._home_route
        )
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self._part, spool._data_path(entry))
            spool._write_meta(entry)
        except OSError as exc:
            self.abort()
            with contextlib.suppress(FileNotFoundError):
                spool._data_path(entry).unlink()
            raise spool._error("cannot commit the spooled copy", self._key, exc) from exc
        self._done = True
        spool._commit(entry)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        discard(self._fd, self._part)
        self._fd = -1
        self._spool._release(self._written)


class SpoolingStorage(Storage):
    """``primary`` with a durable local spool; see the module docstring.

    ``clock`` (monotonic seconds) and ``rng`` drive the backoff schedule. With ``start=False``
    no thread runs and the caller drives retries with :meth:`retry_due`. ``opener`` builds the
    backend for an entry whose recorded destination is not the primary's (by default
    :func:`pressured.storage.factory.open_destination`).
    """

    def __init__(
        self,
        primary: Storage,
        spool_dir: str | os.PathLike[str] = DEFAULT_SPOOL_DIR,
        retry: Backoff | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        start: bool = True,
        close_timeout: float = 30.0,
        opener: Callable[[Destination], Storage] | None = None,
    ) -> None:
        self.primary = primary
        self.name = primary.name
        self.spool_dir = Path(spool_dir)
        self.retry = retry or Backoff()
        self.max_bytes = max_bytes
        self.close_timeout = close_timeout
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not a secret
        self._cond = threading.Condition()
        # Held for every upload and for remove/rename, so none of them interleave per key.
        self._upload_lock = threading.Lock()
        self._opener = opener
        self._home = primary.destination()
        self._home_route = self._home.id if self._home is not None else ""
        # Backends built for recorded destinations other than the primary's, by route.
        self._others: dict[str, Storage] = {}
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._used = 0
        self._failing: set[str] = set()  # routes whose last upload failed
        self._stopping = False
        self._lock_fd = self._take_lock()
        try:
            self._scan()
        except OSError as exc:
            os.close(self._lock_fd)
            raise StorageError(
                f"spool {self.spool_dir}: cannot read the spool: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(
                target=self._run, name="pressured-spool-retry", daemon=True
            )
            self._thread.start()

    def __repr__(self) -> str:
        return f"SpoolingStorage({self.primary!r}, spool_dir={str(self.spool_dir)!r})"

    # -- spool files -------------------------------------------------------------------------

    def _error(self, what: str, key: str, exc: OSError) -> StorageError:
        return StorageError(
            f"spool {self.spool_dir}: {what} (key {quote(key)}): {exc.strerror or exc}"
        )

    def _data_path(self, entry: _Entry) -> Path:
        return self.spool_dir / f"{entry.id}.data"

    def _meta_path(self, entry: _Entry) -> Path:
        return self.spool_dir / f"{entry.id}.meta"

    def _take_lock(self) -> int:
        try:
            make_dirs(self.spool_dir)
            fd = os.open(self.spool_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(
                f"spool {self.spool_dir}: cannot create the spool directory: {exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StorageError(
                f"spool {self.spool_dir}: in use by another pressured (flock: {exc.strerror})"
            ) from exc
        return fd

    def _write_meta(self, entry: _Entry) -> None:
        meta = {
            "version": META_VERSION,
            "key": entry.key,
            "size": entry.size,
            "created": entry.created,
            "destination": entry.dest.to_json() if entry.dest is not None else None,
        }
        tmp = self.spool_dir / f"{entry.id}.meta.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._meta_path(entry))
        fsync_dir(self.spool_dir)

    def _delete_files(self, entry: _Entry) -> None:
        for path in (self._meta_path(entry), self._data_path(entry)):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("spool %s: cannot delete %s: %s", self.spool_dir, path, exc)

    def _read_meta(self, path: Path) -> _Entry:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("version") not in _META_VERSIONS:
            raise ValueError(f"not a version {' or '.join(map(str, _META_VERSIONS))} spool entry")
        key, size, created = meta.get("key"), meta.get("size"), meta.get("created")
        if not isinstance(key, str) or not isinstance(size, int):
            raise ValueError("key or size missing")
        if not isinstance(created, (int, float)):
            raise ValueError("created missing")
        validate_key(key)
        recorded = meta.get("destination")
        dest = Destination.from_json(recorded) if recorded is not None else None
        # No record, or the primary's own place: the primary (its current settings) takes it.
        route = self._home_route if dest is None else dest.id
        return _Entry(path.name.removesuffix(".meta"), key, size, float(created), dest, route)

    def _scan(self) -> None:
        """Adopt committed entries left by an earlier run; drop what was never committed."""
        names = {p.name for p in self.spool_dir.iterdir()}
        found: list[_Entry] = []
        for name in sorted(names):
            path = self.spool_dir / name
            if name.endswith((".part", ".tmp")):
                log.info(
                    "spool %s: dropping %s, a write that never completed", self.spool_dir, name
                )
                path.unlink(missing_ok=True)
            elif name.endswith(".data") and f"{name[:-5]}.meta" not in names:
                log.info("spool %s: dropping %s, never committed", self.spool_dir, name)
                path.unlink(missing_ok=True)
            elif name.endswith(".meta"):
                if f"{name[:-5]}.data" not in names:
                    path.unlink(missing_ok=True)
                    continue
                try:
                    found.append(self._read_meta(path))
                except (OSError, ValueError, StorageError) as exc:
                    # Keep the bytes for a human; never delete what might be the only copy.
                    log.error(
                        "spool %s: unreadable entry %s (%s); left in place",
                        self.spool_dir,
                        name,
                        exc,
                    )
                    for suffix in (".meta", ".data"):
                        with contextlib.suppress(OSError):
                            aside = self.spool_dir / f"{name[:-5]}{suffix}"
                            aside.rename(aside.with_name(f"{aside.name}.corrupt"))
        now = self._clock()
        for entry in sorted(found, key=lambda e: e.id):
            entry.due = now
            older = self._entries.get(entry.slot)
            if older is not None:
                self._delete_files(older)
                self._used -= older.size
            self._entries[entry.slot] = entry
            self._used += entry.size
        if self._entries:
            log.info(
                "spool %s: %d item(s) waiting for %s",
                self.spool_dir,
                len(self._entries),
                self.primary.name,
            )
        away: dict[str, list[_Entry]] = {}
        for entry in self._entries.values():
            if entry.route != self._home_route:
                away.setdefault(entry.route, []).append(entry)
        for entries in away.values():
            log.warning(
                "spool %s: %d item(s) were written for %s, which is no longer configured; "
                "they are delivered there, not to %s",
                self.spool_dir,
                len(entries),
                self._name(entries[0]),
                self.primary.name,
            )

    def _reserve(self, key: str, size: int) -> None:
        with self._cond:
            if self._used + size > self.max_bytes:
                raise StorageError(
                    f"spool {self.spool_dir}: full ({self._used} of {self.max_bytes} bytes "
                    f"used), cannot take key {quote(key)}"
                )
            self._used += size

    def _release(self, size: int) -> None:
        with self._cond:
            self._used -= size

    # -- the upload path ---------------------------------------------------------------------

    def _name(self, entry: _Entry) -> str:
        """The entry's destination, for logs."""
        if entry.route == self._home_route or entry.dest is None:
            return self.primary.name
        return entry.dest.describe()

    def _target(self, entry: _Entry) -> Storage:
        """The backend the entry goes to (called under the upload lock)."""
        if entry.route == self._home_route or entry.dest is None:
            return self.primary
        other = self._others.get(entry.route)
        if other is None:
            opener = self._opener
            if opener is None:
                from pressured.storage.factory import open_destination  # noqa: PLC0415

                opener = open_destination
            try:
                other = opener(entry.dest)
            except StorageError as exc:
                raise _NoBackend(
                    f"cannot build a backend for its recorded destination "
                    f"{entry.dest.describe()}, kept in the spool {self.spool_dir}: {exc}"
                ) from exc
            self._others[entry.route] = other
        return other

    def _commit(self, entry: _Entry) -> None:
        with self._cond:
            older = self._entries.get(entry.slot)
            if older is not None:
                # Superseded: an upload of it under way finishes first (the upload lock), and
                # this newer entry is uploaded after it.
                self._delete_files(older)
                self._used -= older.size
            self._entries[entry.slot] = entry
            try_now = entry.route not in self._failing and not self._stopping
            entry.busy = try_now
            entry.due = self._clock()
            self._cond.notify_all()
        if try_now:
            self._attempt(entry)

    def _upload(self, entry: _Entry) -> None:
        with self._upload_lock:
            with self._cond:
                if self._entries.get(entry.slot) is not entry:
                    return  # superseded or removed while waiting for the lock
            target = self._target(entry)
            with open(self._data_path(entry), "rb") as f:
                writer = target.open_write(entry.key)
                try:
                    while chunk := f.read(CHUNK_SIZE):
                        writer.write(chunk)
                except BaseException:
                    writer.abort()
                    raise
                writer.close()

    def _attempt(self, entry: _Entry) -> bool:
        """Upload one entry (``entry.busy`` set by the caller); True when it is gone."""
        try:
            self._upload(entry)
        except BaseException as exc:
            with self._cond:
                entry.busy = False
                if self._entries.get(entry.slot) is not entry:
                    return True
                self._failing.add(entry.route)
                entry.attempts += 1
                now = self._clock()
                entry.due = now + self.retry.delay(entry.attempts, self._rng)
                # The destination is most likely down for every key: hold its other entries
                # back too, so an outage costs one failed attempt per backoff step, not one per
                # entry. Other destinations go on.
                for other in self._entries.values():
                    if other is not entry and not other.busy and other.route == entry.route:
                        other.due = max(other.due, entry.due)
                delay = entry.due - now
                self._cond.notify_all()
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and kin: the entry stays due for the next round
            if isinstance(exc, _NoBackend):
                log.error("spooled %s: next try in %.1fs: %s", quote(entry.key), delay, exc)
            elif isinstance(exc, _EXPECTED):
                log.warning(
                    "spooled %s: upload to %s failed, attempt %d, next in %.1fs: %s",
                    quote(entry.key),
                    self._name(entry),
                    entry.attempts,
                    delay,
                    exc,
                )
            else:
                log.exception(
                    "spooled %s: unexpected error uploading to %s, next in %.1fs",
                    quote(entry.key),
                    self._name(entry),
                    delay,
                )
            return False
        with self._cond:
            entry.busy = False
            self._failing.discard(entry.route)
            if self._entries.get(entry.slot) is entry:
                del self._entries[entry.slot]
                self._used -= entry.size
                self._delete_files(entry)
                if entry.attempts or entry.route != self._home_route:
                    log.info(
                        "spooled %s: uploaded to %s after %d failed attempt(s)",
                        quote(entry.key),
                        self._name(entry),
                        entry.attempts,
                    )
            self._cond.notify_all()
        return True

    def retry_due(self) -> int:
        """Try every entry whose backoff has expired, oldest and least-tried first; the first
        failure for a destination ends the round for that destination. Returns how many were
        uploaded."""
        uploaded = 0
        failed: set[str] = set()
        while True:
            with self._cond:
                if self._stopping:
                    break
                now = self._clock()
                due = [
                    e
                    for e in self._entries.values()
                    if not e.busy and e.due <= now and e.route not in failed
                ]
                if not due:
                    break
                entry = min(due, key=lambda e: (e.attempts, e.id))
                entry.busy = True
            if self._attempt(entry):
                uploaded += 1
            else:
                failed.add(entry.route)
        return uploaded

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    waiting = [e.due for e in self._entries.values() if not e.busy]
                    timeout = min(waiting) - self._clock() if waiting else None
                    if timeout is not None and timeout <= 0:
                        break
                    self._cond.wait(timeout)
                if self._stopping:
                    return
            try:
                self.retry_due()
            except Exception:
                log.exception("spool %s: retry round failed", self.spool_dir)
                with self._cond:
                    self._cond.wait(self.retry.initial)

    def pending(self) -> list[str]:
        """Keys spooled and not yet accepted by their destination, oldest first (a key twice
        when it waits for two destinations)."""
        with self._cond:
            return [e.key for e in sorted(self._entries.values(), key=lambda e: e.id)]

    def flush(self, timeout: float | None = None) -> bool:
        """Retry every pending entry now, ignoring backoff, and wait up to ``timeout`` seconds
        for the spool to drain. True when nothing is pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            now = self._clock()
            for entry in self._entries.values():
                entry.due = min(entry.due, now)
            self._cond.notify_all()
        if self._thread is None or not self._thread.is_alive():
            self.retry_due()
        with self._cond:
            while self._entries:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                if self._thread is None or not self._thread.is_alive():
                    break
                self._cond.wait(left)
            return not self._entries

    # -- Storage -----------------------------------------------------------------------------

    def open_write(self, key: str) -> Writer:
        validate_key(key)
        return SpoolWriter(self, key)

    def _spooled(self, key: str) -> _Entry | None:
        """The pending entry for ``key`` in the primary's destination; the others are no part
        of what this storage holds."""
        with self._cond:
            return self._entries.get((self._home_route, key))

    def open_read(self, key: str) -> IO[bytes]:
        """The spooled copy while one is pending (it is newer than the primary's), else the
        primary's."""
        validate_key(key)
        entry = self._spooled(key)
        if entry is not None:
            with contextlib.suppress(FileNotFoundError):  # uploaded meanwhile
                return open(self._data_path(entry), "rb")
        return self.primary.open_read(key)

    def exists(self, key: str) -> bool:
        validate_key(key)
        return self._spooled(key) is not None or self.primary.exists(key)

    def remove(self, key: str) -> None:
        validate_key(key)
        with self._upload_lock:
            self.primary.remove(key)
            self._drop(key)

    def _drop(self, key: str) -> None:
        with self._cond:
            entry = self._entries.pop((self._home_route, key), None)
            if entry is not None:
                self._used -= entry.size
                self._delete_files(entry)
                self._cond.notify_all()

    def rename(self, src: str, dst: str) -> None:
        """A pending ``src`` is renamed in the spool (and uploaded as ``dst`` later); otherwise
        the primary renames. Either way a pending older ``dst`` is dropped."""
        validate_key(src)
        validate_key(dst)
        with self._upload_lock:
            entry = self._spooled(src)
            if entry is None:
                self.primary.rename(src, dst)
                self._drop(dst)
                return
            moved = _Entry(
                entry.id, dst, entry.size, entry.created, entry.dest, entry.route, due=self._clock()
            )
            try:
                self._write_meta(moved)
            except OSError as exc:
                raise self._error(f"cannot rename to {quote(dst)}", src, exc) from exc
            with self._cond:
                self._entries.pop(entry.slot, None)
                self._drop_locked(dst)
                self._entries[moved.slot] = moved
                self._cond.notify_all()
            try:
                # An older src may sit in the primary; the spooled copy is what src was.
                self.primary.remove(src)
            except _EXPECTED as exc:
                log.warning(
                    "spool: renamed %s to %s; an older %s may remain in %s: %s",
                    quote(src),
                    quote(dst),
                    quote(src),
                    self.primary.name,
                    exc,
                )

    def _drop_locked(self, key: str) -> None:
        entry = self._entries.pop((self._home_route, key), None)
        if entry is not None:
            self._used -= entry.size
            self._delete_files(entry)

    def list(self, prefix: str = "") -> Iterator[str]:
        """The primary's keys and the pending ones; a primary that cannot list raises (an
        incomplete listing would look like missing captures)."""
        keys = set(self.primary.list(prefix))
        with self._cond:
            keys.update(
                key
                for route, key in self._entries
                if route == self._home_route and key.startswith(prefix)
            )
        return iter(sorted(keys))

    def close(self) -> None:
        """Stop the retrier (after the upload under way), close the primary, unlock the spool.
        Pending entries stay on disk for the next start."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.close_timeout)
            if self._thread.is_alive():
                log.warning("spool %s: an upload is still running at shutdown", self.spool_dir)
        with self._cond:
            if self._entries:
                log.warning(
                    "spool %s: %d item(s) not yet in their destination, kept for the next start",
                    self.spool_dir,
                    len(self._entries),
                )
        for other in self._others.values():
            try:
                other.close()
            except Exception:
                log.exception("spool %s: closing %r failed", self.spool_dir, other)
        self.primary.close()
        os.close(self._lock_fd)
