"""Fuzzing the /dev/kmsg path as the daemon runs it: records (random bytes, and real kernel
records from tests/kills/fixtures mutated) go one read() each through KmsgReader, its record
parser and the OOM parser. What comes out is kill records whose fields a kernel could have
printed, or nothing; never an exception. Bounded to run in a few seconds with the suite; the
crashes it found have their own cases in test_kmsg_parse.py and test_kmsg_reader.py."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pressured.kills.readers.kmsg import KMSG_READ_SIZE, KmsgReader
from pressured.model import SOURCE_KMSG, KillRecord

from . import FIXTURES, fixture_records

pytestmark = pytest.mark.hostile

PID_MAX_LIMIT = 4 * 1024 * 1024
"""include/linux/threads.h on 64-bit: no pid is above this."""

RSS_NAMES = {"total_vm", "anon_rss", "file_rss", "shmem_rss", "pgtables"}

STREAMS = {
    path.name: [record.encode() for record in fixture_records(path.name)]
    for path in sorted(FIXTURES.glob("*.kmsg"))
}
REAL = [record for records in STREAMS.values() for record in records]

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def sane(kill: KillRecord) -> None:
    """Fields a kernel could have printed: the checks that matter to what consumes them."""
    assert kill.source == SOURCE_KMSG
    assert isinstance(kill.pid, int) and 1 <= kill.pid <= PID_MAX_LIMIT, kill.pid
    assert kill.comm is None or isinstance(kill.comm, str)
    assert kill.cgroup is None or kill.cgroup.startswith("/"), kill.cgroup
    assert set(kill.rss) <= RSS_NAMES
    for value in kill.rss.values():
        assert isinstance(value, int) and 0 <= value < 1 << 64, value
    assert kill.uid is None or 0 <= kill.uid < (1 << 32) - 1, kill.uid
    assert kill.oom_score_adj is None or -1000 <= kill.oom_score_adj <= 1000
    assert kill.count_delta == 1
    chosen = kill.extra.get("chosen_pid")
    assert chosen is None or 1 <= chosen <= PID_MAX_LIMIT, chosen
    for name in ("oom_memcg", "oom_group"):
        value = kill.extra.get(name)
        assert value is None or value.startswith("/"), (name, value)
    assert isinstance(kill.extra["kmsg_seq"], int) and kill.extra["kmsg_seq"] >= 0
    assert isinstance(kill.extra["kmsg_usec"], int) and kill.extra["kmsg_usec"] >= 0


def drive(records: list[bytes], *, replay: bool = True) -> list[KillRecord]:
    """Every record through KmsgReader.read (one read() each, as /dev/kmsg answers), then the
    parser's flush; every kill checked."""
    queue = list(records)

    def read(fd: int, size: int) -> bytes:
        assert size == KMSG_READ_SIZE
        if not queue:
            raise BlockingIOError
        return queue.pop(0)[:size]

    reader = KmsgReader(
        os.devnull, replay=replay, read=read, clock=lambda: 100.0, wall_clock=lambda: 1.7e9
    )
    try:
        kills = reader.read()
        kills += reader.parser.flush(time=100.0, wall=1.7e9)
    finally:
        reader.close()
    assert queue == []
    for kill in kills:
        sane(kill)
    return kills


# -- mutations of real records ---------------------------------------------------------------

_NUMBERS = st.one_of(
    st.integers(-(1 << 70), 1 << 70).map(str),
    st.sampled_from(
        [
            "0",
            "-1",
            "4194305",
            "4294967295",
            "18446744073709551615",
            "99999999999999999999999",
            "+5",
            "1_0",
            "\u0663",  # ARABIC-INDIC DIGIT THREE: \d and int() take it
            "\uff17",  # FULLWIDTH DIGIT SEVEN
        ]
    ),
    st.integers(4290, 5000).map(lambda n: "9" * n),  # past int()'s 4300-digit limit
)
_TOKENS = st.sampled_from(
    [
        b",",
        b";",
        b"\n",
        b"\n ",
        b" ",
        b"=",
        b"(",
        b")",
        b"kB",
        b"\\x0a",
        b"\\x",
        b"\xff",
        b"/",
        b"Killed process ",
        b"invoked oom-killer: ",
        b"oom-kill:constraint=CONSTRAINT_MEMCG,",
        b"task_memcg=",
        b"oom_memcg=",
        b"Tasks in ",
        b" are going to be killed due to memory.oom.group set",
        b"Task in ",
        b" killed as a result of limit of ",
        b"Kill process ",
        b" or sacrifice child",
        b"oom_score_adj:",
        b"UID:",
        b"caller=",
    ]
)


@st.composite
def mutated(draw: st.DrawFn, base: list[bytes] | None = None) -> bytes:
    """A real record (from ``base``, by default any fixture's) changed one to four times."""
    data = bytearray(draw(st.sampled_from(base or REAL)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["number", "insert", "token", "delete", "flip", "splice"]))
        at = draw(st.integers(0, len(data)))
        if op == "number":
            runs = list(re.finditer(rb"\d+", bytes(data)))
            if runs:
                run = draw(st.sampled_from(runs))
                number = draw(_NUMBERS).encode()
                data[run.start() : run.end()] = number
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "token":
            data[at:at] = draw(_TOKENS)
        elif op == "delete":
            end = draw(st.integers(at, min(len(data), at + 40)))
            del data[at:end]
        elif op == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "splice":
            other = draw(st.sampled_from(REAL))
            start = draw(st.integers(0, len(other)))
            data[at:] = other[start:]
    return bytes(data) or b"\n"  # /dev/kmsg never answers a read with nothing


@st.composite
def mutated_stream(draw: st.DrawFn) -> list[bytes]:
    """One fixture's records in order, a few of them mutated (so the parser's state across
    records is reached), sometimes cut short or with records dropped."""
    name = draw(st.sampled_from(sorted(STREAMS)))
    records = list(STREAMS[name])
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(records) - 1))
        if draw(st.booleans()):
            records[i] = draw(mutated([records[i]]))
        else:
            del records[i]
            if not records:
                break
    return records


def records_of(raw: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    return st.lists(raw, min_size=1, max_size=12)


# -- the fuzz targets ------------------------------------------------------------------------


def test_real_streams_give_sane_kills() -> None:
    """The baseline the mutations start from: every fixture yields kills, all sane."""
    for name, records in STREAMS.items():
        assert drive(records), name


@FUZZ
@given(records_of(st.binary(min_size=1, max_size=600)))
def test_fuzz_random_bytes(records: list[bytes]) -> None:
    drive(records)


@FUZZ
@given(records_of(st.binary(min_size=1, max_size=200).map(lambda b: b"3,1,2,-;" + b)))
def test_fuzz_random_text_behind_a_valid_header(records: list[bytes]) -> None:
    drive(records)


@FUZZ
@given(records_of(mutated()))
def test_fuzz_mutated_real_records(records: list[bytes]) -> None:
    drive(records)


@FUZZ
@given(mutated_stream(), st.booleans())
def test_fuzz_mutated_real_streams(records: list[bytes], replay: bool) -> None:
    drive(records, replay=replay)
