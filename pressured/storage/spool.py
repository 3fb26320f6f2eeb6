"""A local spool in front of a remote backend, so an outage of S3 loses nothing.

Every write is streamed first into the spool directory (constant memory, one local file), then
committed: the data file is renamed into place and a small JSON ``.meta`` beside it records the
key. Only a committed entry is uploaded, by streaming the file to the primary backend; the entry
is deleted once the primary has accepted it. If the upload fails, ``close()`` still succeeds
(the bytes are on local disk) and a daemon thread retries with exponential backoff and jitter.
A new instance over the same directory finds the committed entries and uploads them, so a
restart during an outage loses nothing either.

Spool layout (one flat directory, names sort by creation time)::

    <id>.part        a write in progress; deleted at start (the writer never committed it)
    <id>.data        committed bytes
    <id>.meta        {"version": 1, "key": ..., "size": ..., "created": <unix time>}
    .lock            flock(2) so two daemons never upload and delete the same entries

At most one entry per key is kept: committing a newer write supersedes the older entry, and
uploads are serialized, so an older version never lands after a newer one.
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

from pressured.errors import StorageError
from pressured.storage.base import Storage, Writer, validate_key
from pressured.storage.fsio import create_exclusive, discard, fsync_dir, make_dirs, write_all

log = logging.getLogger("pressured.storage.spool")

DEFAULT_SPOOL_DIR = "/var/lib/pressured/spool"
DEFAULT_MAX_BYTES = 1 << 30
CHUNK_SIZE = 1024 * 1024
META_VERSION = 1
# Failures the primary may raise when the remote end is away; anything else is a bug, logged
# with its traceback, and still retried (the bytes are safe in the spool either way).
_EXPECTED = (StorageError, OSError)


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
    attempts: int = 0
    due: float = 0.0
    busy: bool = False


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
            raise StorageError(f"spool: write to a closed writer for key {self._key!r}")
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
        entry = _Entry(self._id, self._key, self._written, time.time())
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
    no thread runs and the caller drives retries with :meth:`retry_due`.
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
        self._entries: dict[str, _Entry] = {}
        self._used = 0
        self._healthy = True
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
        return StorageError(f"spool {self.spool_dir}: {what} (key {key!r}): {exc.strerror or exc}")

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
        if not isinstance(meta, dict) or meta.get("version") != META_VERSION:
            raise ValueError("not a version 1 spool entry")
        key, size, created = meta.get("key"), meta.get("size"), meta.get("created")
        if not isinstance(key, str) or not isinstance(size, int):
            raise ValueError("key or size missing")
        if not isinstance(created, (int, float)):
            raise ValueError("created missing")
        validate_key(key)
        return _Entry(path.name.removesuffix(".meta"), str(key), size, float(created))

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
            older = self._entries.get(entry.key)
            if older is not None:
                self._delete_files(older)
                self._used -= older.size
            self._entries[entry.key] = entry
            self._used += entry.size
        if self._entries:
            log.info(
                "spool %s: %d item(s) waiting for %s",
                self.spool_dir,
                len(self._entries),
                self.primary.name,
            )

    def _reserve(self, key: str, size: int) -> None:
        with self._cond:
            if self._used + size > self.max_bytes:
                raise StorageError(
                    f"spool {self.spool_dir}: full ({self._used} of {self.max_bytes} bytes "
                    f"used), cannot take key {key!r}"
                )
            self._used += size

    def _release(self, size: int) -> None:
        with self._cond:
            self._used -= size

    # -- the upload path ---------------------------------------------------------------------

    def _commit(self, entry: _Entry) -> None:
        with self._cond:
            older = self._entries.get(entry.key)
            if older is not None:
                # Superseded: an upload of it under way finishes first (the upload lock), and
                # this newer entry is uploaded after it.
                self._delete_files(older)
                self._used -= older.size
            self._entries[entry.key] = entry
            try_now = self._healthy and not self._stopping
            entry.busy = try_now
            entry.due = self._clock()
            self._cond.notify_all()
        if try_now:
            self._attempt(entry)

    def _upload(self, entry: _Entry) -> None:
        with self._upload_lock:
            with self._cond:
                if self._entries.get(entry.key) is not entry:
                    return  # superseded or removed while waiting for the lock
            with open(self._data_path(entry), "rb") as f:
                writer = self.primary.open_write(entry.key)
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
                if self._entries.get(entry.key) is not entry:
                    return True
                self._healthy = False
                entry.attempts += 1
                now = self._clock()
                entry.due = now + self.retry.delay(entry.attempts, self._rng)
                # The primary is most likely down for every key: hold the others back too, so
                # an outage costs one failed attempt per backoff step, not one per entry.
                for other in self._entries.values():
                    if other is not entry and not other.busy:
                        other.due = max(other.due, entry.due)
                delay = entry.due - now
                self._cond.notify_all()
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and kin: the entry stays due for the next round
            if isinstance(exc, _EXPECTED):
                log.warning(
                    "spooled %r: upload to %s failed, attempt %d, next in %.1fs: %s",
                    entry.key,
                    self.primary.name,
                    entry.attempts,
                    delay,
                    exc,
                )
            else:
                log.exception(
                    "spooled %r: unexpected error uploading to %s, next in %.1fs",
                    entry.key,
                    self.primary.name,
                    delay,
                )
            return False
        with self._cond:
            entry.busy = False
            self._healthy = True
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
                self._used -= entry.size
                self._delete_files(entry)
                if entry.attempts:
                    log.info(
                        "spooled %r: uploaded to %s after %d failed attempt(s)",
                        entry.key,
                        self.primary.name,
                        entry.attempts,
                    )
            self._cond.notify_all()
        return True

    def retry_due(self) -> int:
        """Try every entry whose backoff has expired, oldest and least-tried first; stop at the
        first failure. Returns how many were uploaded."""
        uploaded = 0
        while True:
            with self._cond:
                if self._stopping:
                    break
                now = self._clock()
                due = [e for e in self._entries.values() if not e.busy and e.due <= now]
                if not due:
                    break
                entry = min(due, key=lambda e: (e.attempts, e.id))
                entry.busy = True
            if not self._attempt(entry):
                break
            uploaded += 1
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
        """Keys spooled and not yet accepted by the primary, oldest first."""
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
        with self._cond:
            return self._entries.get(key)

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
            entry = self._entries.pop(key, None)
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
            moved = _Entry(entry.id, dst, entry.size, entry.created, due=self._clock())
            try:
                self._write_meta(moved)
            except OSError as exc:
                raise self._error(f"cannot rename to {dst!r}", src, exc) from exc
            with self._cond:
                self._entries.pop(src, None)
                self._drop_locked(dst)
                self._entries[dst] = moved
                self._cond.notify_all()
            try:
                # An older src may sit in the primary; the spooled copy is what src was.
                self.primary.remove(src)
            except _EXPECTED as exc:
                log.warning(
                    "spool: renamed %r to %r; an older %r may remain in %s: %s",
                    src,
                    dst,
                    src,
                    self.primary.name,
                    exc,
                )

    def _drop_locked(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._used -= entry.size
            self._delete_files(entry)

    def list(self, prefix: str = "") -> Iterator[str]:
        """The primary's keys and the pending ones; a primary that cannot list raises (an
        incomplete listing would look like missing captures)."""
        keys = set(self.primary.list(prefix))
        with self._cond:
            keys.update(k for k in self._entries if k.startswith(prefix))
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
                    "spool %s: %d item(s) not yet in %s, kept for the next start",
                    self.spool_dir,
                    len(self._entries),
                    self.primary.name,
                )
        self.primary.close()
        os.close(self._lock_fd)
