"""SpoolingStorage: the spool logic against a local primary that can be switched off, then the
real thing (S3 through boto3 against moto's server) through an outage and a restart."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from pressured.errors import StorageError
from pressured.storage.base import Destination, Storage, Writer
from pressured.storage.factory import open_storage
from pressured.storage.local import LocalStorage
from pressured.storage.s3 import MIB, S3Storage
from pressured.storage.spool import Backoff, SpoolingStorage
from tests.storage.conftest import (
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    MotoServer,
    pattern,
    raw_client,
    write_then_fail,
)


class _FlakyWriter(Writer):
    def __init__(self, owner: SwitchableStorage, inner: Writer) -> None:
        self._owner = owner
        self._inner = inner

    def write(self, data: bytes) -> int:
        if self._owner.down:
            raise StorageError("switchable: down (write)")
        return self._inner.write(data)

    def close(self) -> None:
        if self._owner.down:
            raise StorageError("switchable: down (close)")
        self._inner.close()

    def abort(self) -> None:
        self._owner.aborts += 1
        self._inner.abort()


class SwitchableStorage(Storage):
    """Test double standing in for a remote backend: a LocalStorage that fails every call
    with StorageError while ``down`` is set, and counts upload attempts."""

    name = "switchable"

    def __init__(self, root: Path) -> None:
        self.inner = LocalStorage(root)
        self.down = False
        self.attempts = 0
        self.aborts = 0
        self.closed = False

    def destination(self) -> Destination:
        return Destination("switchable", {"root": str(self.inner.root)})

    def _check(self) -> None:
        if self.down:
            raise StorageError("switchable: down")

    def open_write(self, key: str) -> Writer:
        self.attempts += 1
        return _FlakyWriter(self, self.inner.open_write(key))

    def open_read(self, key: str) -> IO[bytes]:
        self._check()
        return self.inner.open_read(key)

    def exists(self, key: str) -> bool:
        self._check()
        return self.inner.exists(key)

    def remove(self, key: str) -> None:
        self._check()
        self.inner.remove(key)

    def rename(self, src: str, dst: str) -> None:
        self._check()
        self.inner.rename(src, dst)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._check()
        return self.inner.list(prefix)

    def close(self) -> None:
        self.closed = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def primary(tmp_path: Path) -> SwitchableStorage:
    return SwitchableStorage(tmp_path / "primary")


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def spool_files(spool_dir: Path) -> list[str]:
    return sorted(os.listdir(spool_dir))


def open_spool(primary: Storage, spool_dir: Path, **kwargs: Any) -> SpoolingStorage:
    kwargs.setdefault("start", False)
    kwargs.setdefault("retry", Backoff(initial=0.01, max=0.05))
    return SpoolingStorage(primary, spool_dir, **kwargs)


def wait_drained(spool: SpoolingStorage, deadline_s: float = 30.0) -> None:
    """Poll (no flush) so the background retrier alone must do the work."""
    end = time.monotonic() + deadline_s
    while spool.pending() and time.monotonic() < end:
        time.sleep(0.02)
    assert spool.pending() == []


def test_healthy_write_goes_straight_through(primary: SwitchableStorage, spool_dir: Path) -> None:
    spool = open_spool(primary, spool_dir)
    spool.write_stream("heaps/a", (b"x" * 1000 for _ in range(100)))

    assert primary.inner.read("heaps/a") == b"x" * 100_000
    assert spool.pending() == []
    assert spool_files(spool_dir) == [".lock"]
    spool.close()
    assert primary.closed


def test_outage_keeps_data_durable_readable_and_listed(
    primary: SwitchableStorage, spool_dir: Path
) -> None:
    spool = open_spool(primary, spool_dir)
    primary.down = True
    spool.write("heaps/a", b"captured")  # does not raise: the bytes are on local disk

    assert spool.pending() == ["heaps/a"]
    assert primary.aborts == 1  # the failed upload's writer was aborted
    assert spool.read("heaps/a") == b"captured"
    assert spool.exists("heaps/a")
    assert not primary.inner.exists("heaps/a")
    files = spool_files(spool_dir)
    assert [f.rsplit(".", 1)[1] for f in files] == ["lock", "data", "meta"]

    primary.down = False
    assert list(spool.list("heaps/")) == ["heaps/a"]
    assert spool.flush(timeout=5)
    assert primary.inner.read("heaps/a") == b"captured"
    assert spool_files(spool_dir) == [".lock"]


def test_restart_uploads_what_an_earlier_run_spooled(
    primary: SwitchableStorage, spool_dir: Path
) -> None:
    first = open_spool(primary, spool_dir)
    primary.down = True
    first.write("a", b"one")
    first.write("b/c", b"two")
    first.close()

    look = open_spool(primary, spool_dir)
    assert look.pending() == ["a", "b/c"]
    look.close()

    primary.down = False
    second = open_spool(primary, spool_dir, start=True)
    try:
        wait_drained(second)
    finally:
        second.close()
    assert primary.inner.read("a") == b"one"
    assert primary.inner.read("b/c") == b"two"


def test_uncommitted_leftovers_are_dropped_and_corrupt_ones_kept(
    primary: SwitchableStorage, spool_dir: Path
) -> None:
    spool_dir.mkdir()
    (spool_dir / "1.part").write_bytes(b"interrupted write")
    (spool_dir / "2.data").write_bytes(b"no meta: never committed")
    (spool_dir / "3.meta").write_text('{"version": 1, "key": "k", "size": 1, "created": 1}')
    (spool_dir / "4.meta.tmp").write_text("{")
    (spool_dir / "5.data").write_bytes(b"bytes a human may want")
    (spool_dir / "5.meta").write_text("{not json")

    spool = open_spool(primary, spool_dir)

    assert spool.pending() == []
    assert spool_files(spool_dir) == [".lock", "5.data.corrupt", "5.meta.corrupt"]
    spool.close()


def test_newer_write_supersedes_the_pending_one(
    primary: SwitchableStorage, spool_dir: Path
) -> None:
    spool = open_spool(primary, spool_dir)
    primary.down = True
    spool.write("k", b"old")
    spool.write("k", b"new")

    assert spool.pending() == ["k"]
    assert len([f for f in spool_files(spool_dir) if f.endswith(".data")]) == 1
    assert spool.read("k") == b"new"
    primary.down = False
    assert spool.flush(timeout=5)
    assert primary.inner.read("k") == b"new"


def test_remove_drops_the_pending_copy(primary: SwitchableStorage, spool_dir: Path) -> None:
    spool = open_spool(primary, spool_dir)
    primary.down = True
    spool.write("k", b"x")
    primary.down = False
    spool.remove("k")

    assert spool.pending() == []
    assert spool.flush(timeout=5)
    assert not primary.inner.exists("k")
    assert spool_files(spool_dir) == [".lock"]


def test_remove_while_primary_down_changes_nothing(
    primary: SwitchableStorage, spool_dir: Path
) -> None:
    spool = open_spool(primary, spool_dir)
    primary.down = True
    spool.write("k", b"x")
    with pytest.raises(StorageError, match="down"):
        spool.remove("k")
    assert spool.pending() == ["k"]


def test_rename_of_a_pending_entry_survives_restart(
    primary: SwitchableStorage, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = open_spool(primary, spool_dir)
    primary.down = True
    spool.write("tmp/a", b"data")
    spool.rename("tmp/a", "final/a")

    assert spool.pending() == ["final/a"]
    assert spool.read("final/a") == b"data"
    assert "an older 'tmp/a' may remain" in caplog.text
    spool.close()

    primary.down = False
    again = open_spool(primary, spool_dir)
    assert again.pending() == ["final/a"]
    assert again.flush(timeout=5)
    assert primary.inner.read("final/a") == b"data"
    assert not primary.inner.exists("tmp/a")


def test_rename_in_the_primary_drops_an_older_pending_target(
    primary: SwitchableStorage, spool_dir: Path
) -> None:
    spool = open_spool(primary, spool_dir)
    spool.write("src", b"fresh")
    primary.down = True
    spool.write("dst", b"stale")
    primary.down = False
    spool.rename("src", "dst")

    assert spool.pending() == []
    assert spool.read("dst") == b"fresh"


def test_spool_size_is_bounded(primary: SwitchableStorage, spool_dir: Path) -> None:
    spool = open_spool(primary, spool_dir, max_bytes=100)
    with pytest.raises(StorageError, match=r"full .*'too-big'"):
        spool.write("too-big", b"x" * 101)
    assert spool_files(spool_dir) == [".lock"]

    primary.down = True
    spool.write("held", b"x" * 60)
    with pytest.raises(StorageError, match="full"):
        spool.write("no-room", b"x" * 50)
    primary.down = False
    assert spool.flush(timeout=5)
    spool.write("fits-again", b"x" * 90)
    assert primary.inner.read("fits-again") == b"x" * 90


def test_aborted_write_leaves_nothing(primary: SwitchableStorage, spool_dir: Path) -> None:
    spool = open_spool(primary, spool_dir)
    with pytest.raises(RuntimeError, match="capture failed"):
        write_then_fail(spool, "k", b"partial")
    assert spool_files(spool_dir) == [".lock"]
    assert primary.attempts == 0


def test_bad_key_is_refused(primary: SwitchableStorage, spool_dir: Path) -> None:
    spool = open_spool(primary, spool_dir)
    with pytest.raises(StorageError, match="invalid storage key"):
        spool.write("../escape", b"x")


def test_one_spool_directory_one_owner(primary: SwitchableStorage, spool_dir: Path) -> None:
    first = open_spool(primary, spool_dir)
    with pytest.raises(StorageError, match="in use"):
        open_spool(primary, spool_dir)
    first.close()
    open_spool(primary, spool_dir).close()


def test_backoff_grows_caps_and_jitters() -> None:
    exact = Backoff(initial=1, max=8, jitter=0)
    rng = random.Random(7)
    assert [exact.delay(n, rng) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert exact.delay(100_000, rng) == 8  # no float overflow

    jittered = Backoff(initial=1, max=8, jitter=0.5)
    delays = [jittered.delay(3, rng) for _ in range(200)]
    assert all(2 <= d <= 4 for d in delays)
    assert len(set(delays)) > 100


def test_retry_schedule_follows_the_backoff(primary: SwitchableStorage, spool_dir: Path) -> None:
    clock = FakeClock()
    spool = open_spool(primary, spool_dir, clock=clock, retry=Backoff(initial=10, max=40, jitter=0))
    primary.down = True
    spool.write("k1", b"1")  # tried at once, fails: next try at +10
    assert primary.attempts == 1
    spool.write("k2", b"2")  # known outage: close() does not wait on the primary
    assert primary.attempts == 1

    assert spool.retry_due() == 0  # k2 is due at once (a probe), fails: both now at +10
    assert primary.attempts == 2
    assert spool.retry_due() == 0
    assert primary.attempts == 2

    clock.now = 1010
    assert spool.retry_due() == 0  # one failure ends the round: k1 to +20, k2 held with it
    assert primary.attempts == 3
    clock.now = 1029.9
    assert spool.retry_due() == 0
    assert primary.attempts == 3

    primary.down = False
    clock.now = 1030
    assert spool.retry_due() == 2
    assert spool.pending() == []
    assert primary.inner.read("k1") == b"1"
    assert primary.inner.read("k2") == b"2"
    spool.write("k3", b"3")  # healthy again: uploaded inside close()
    assert primary.inner.read("k3") == b"3"


def test_background_retrier_recovers_alone(primary: SwitchableStorage, spool_dir: Path) -> None:
    spool = open_spool(primary, spool_dir, start=True)
    try:
        primary.down = True
        spool.write("k", b"x")
        assert primary.attempts >= 1
        primary.down = False
        wait_drained(spool)
        assert primary.inner.read("k") == b"x"
    finally:
        spool.close()


def test_s3_outage_then_recovery_after_restart(
    tmp_path: Path, aws_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's promise, end to end: S3 goes away, a capture is spooled, the daemon restarts,
    S3 comes back, the capture lands in the bucket intact."""
    caplog.set_level(logging.DEBUG)
    server = MotoServer(tmp_path)
    server.start()
    spool_dir = tmp_path / "spool"
    data = pattern(5 * MIB + 4321, seed=3)  # multipart on recovery

    def s3() -> S3Storage:
        return S3Storage(
            "pressured-outage",
            region="us-east-1",
            endpoint_url=server.url,
            path_style=True,
            part_size=5 * MIB,
            max_attempts=2,
        )

    try:
        raw_client(server.url).create_bucket(Bucket="pressured-outage")
        first = SpoolingStorage(s3(), spool_dir, Backoff(initial=0.05, max=0.5))
        first.write("heaps/before", b"fine")
        assert first.pending() == []

        server.stop()
        first.write_stream("heaps/during", (data[i : i + MIB] for i in range(0, len(data), MIB)))
        assert first.pending() == ["heaps/during"]
        assert first.read("heaps/during") == data
        first.close()  # the daemon restarts while S3 is still down

        server.start()  # moto keeps state in memory: the bucket must be made again
        client = raw_client(server.url)
        client.create_bucket(Bucket="pressured-outage")
        second = SpoolingStorage(s3(), spool_dir, Backoff(initial=0.05, max=0.5))
        try:
            wait_drained(second)
        finally:
            second.close()
        body = client.get_object(Bucket="pressured-outage", Key="heaps/during")["Body"].read()
        assert body == data
        assert spool_files(spool_dir) == [".lock"]
    finally:
        server.stop()

    assert "upload to s3 failed" in caplog.text
    assert SECRET_ACCESS_KEY not in caplog.text
    assert SESSION_TOKEN not in caplog.text


def test_open_storage_puts_s3_behind_the_spool(
    moto_server: MotoServer, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    store = open_storage(
        {
            "type": "s3",
            "s3": {
                "bucket": bucket,
                "prefix": "prod",
                "endpoint_url": moto_server.url,
                "path_style": True,
                "region": "us-east-1",
            },
            "spool": {"path": str(tmp_path / "spool")},
        }
    )
    try:
        assert isinstance(store, SpoolingStorage)
        assert isinstance(store.primary, S3Storage)
        store.write("heaps/x", b"profile")
    finally:
        store.close()
    assert s3_client.get_object(Bucket=bucket, Key="prod/heaps/x")["Body"].read() == b"profile"


def test_entries_go_to_the_destination_they_were_written_for(
    tmp_path: Path, spool_dir: Path
) -> None:
    old = SwitchableStorage(tmp_path / "old")
    first = open_spool(old, spool_dir)
    old.down = True
    first.write("heaps/a", b"for the old place")
    first.close()

    opened: list[Destination] = []

    def opener(destination: Destination) -> Storage:
        opened.append(destination)
        return SwitchableStorage(Path(str(destination.where["root"])))

    new = SwitchableStorage(tmp_path / "new")
    second = open_spool(new, spool_dir, opener=opener)
    second.write("heaps/a", b"for the new place")  # another object: supersedes nothing
    assert second.pending() == ["heaps/a"]
    assert second.read("heaps/a") == b"for the new place"
    assert second.retry_due() == 1
    second.close()

    assert opened == [old.destination()]
    assert (tmp_path / "old" / "heaps" / "a").read_bytes() == b"for the old place"
    assert new.inner.read("heaps/a") == b"for the new place"
    assert spool_files(spool_dir) == [".lock"]


def test_an_old_destination_that_cannot_be_built_is_kept_and_reported(
    tmp_path: Path, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = SwitchableStorage(tmp_path / "old")
    old.down = True
    first = open_spool(old, spool_dir)
    first.write("heaps/a", b"for the old place")
    first.close()

    clock = FakeClock()
    new = SwitchableStorage(tmp_path / "new")
    # The default opener builds s3 and local backends only.
    second = open_spool(new, spool_dir, clock=clock, retry=Backoff(initial=10, jitter=0))
    assert "no longer configured" in caplog.text
    assert second.retry_due() == 0
    assert "cannot build a backend for its recorded destination switchable(root=" in caplog.text
    assert "unknown storage type 'switchable'" in caplog.text
    assert "kept in the spool" in caplog.text
    assert any(r.levelno == logging.ERROR and "kept" in r.getMessage() for r in caplog.records)

    second.write("heaps/b", b"new")  # the old destination's failure holds back nothing here
    assert new.inner.read("heaps/b") == b"new"
    new.down = True
    second.write("heaps/c", b"new, during an outage")
    new.down = False
    clock.now += 10
    assert second.retry_due() == 1  # heaps/c; heaps/a fails again
    assert second.pending() == ["heaps/a"]
    assert not new.inner.exists("heaps/a")
    assert not (tmp_path / "old" / "heaps" / "a").exists()
    second.close()
    assert len([f for f in spool_files(spool_dir) if f.endswith(".data")]) == 1


def test_entries_of_the_first_spool_format_go_to_the_primary(
    primary: SwitchableStorage, spool_dir: Path
) -> None:
    spool_dir.mkdir()
    (spool_dir / "1.data").write_bytes(b"old format")
    (spool_dir / "1.meta").write_text('{"version": 1, "key": "k", "size": 10, "created": 1}')
    spool = open_spool(primary, spool_dir)
    assert spool.pending() == ["k"]
    assert spool.read("k") == b"old format"
    assert spool.retry_due() == 1
    assert primary.inner.read("k") == b"old format"


def test_s3_entries_keep_bucket_prefix_and_endpoint_across_a_config_change(
    tmp_path: Path,
    moto_server: MotoServer,
    s3_client: Any,
    bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Spooled during an outage of the old store; the configuration then moves to another
    endpoint, bucket and prefix: the old capture still lands where it was meant to."""
    old_server = MotoServer(tmp_path)
    spool_dir = tmp_path / "spool"
    old_section = {
        "type": "s3",
        "s3": {
            "bucket": "pressured-old",
            "prefix": "old",
            "endpoint_url": old_server.url,
            "path_style": True,
            "region": "us-east-1",
        },
        "spool": {"path": str(spool_dir)},
    }
    new_section = {
        "type": "s3",
        "s3": {
            "bucket": bucket,
            "prefix": "new",
            "endpoint_url": moto_server.url,
            "path_style": True,
            "region": "us-east-1",
        },
        "spool": {"path": str(spool_dir)},
    }
    try:
        first = open_storage(old_section)
        assert isinstance(first, SpoolingStorage)
        first.write("heaps/a", b"meant for the old bucket")  # the old store is down
        assert first.pending() == ["heaps/a"]
        first.close()

        old_server.start()
        old_client = raw_client(old_server.url)
        old_client.create_bucket(Bucket="pressured-old")
        second = open_storage(new_section)
        assert isinstance(second, SpoolingStorage)
        try:
            second.write("heaps/b", b"meant for the new bucket")
            assert second.flush(timeout=30)
        finally:
            second.close()

        body = old_client.get_object(Bucket="pressured-old", Key="old/heaps/a")["Body"].read()
        assert body == b"meant for the old bucket"
    finally:
        old_server.stop()
    listed = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [item["Key"] for item in listed] == ["new/heaps/b"]
    assert spool_files(spool_dir) == [".lock"]
    assert "no longer configured" in caplog.text
