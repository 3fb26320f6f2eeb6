"""kmsg record and OOM line parsing: real records (6.18 host, 6.1 guest) and the formats of
older kernels, rate-limited bursts, fragments, garbage, and fuzzing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pressured.kills.readers.kmsg_parse import KmsgOomParser, parse_kmsg_record
from pressured.model import KillRecord

from . import fixture_records

HOST_CG = "/process_api/0b1d25e2f507e0c6a2de1e3a8b3c46ef/pk-fixture"


def run(records: list[str]) -> tuple[list[KillRecord], KmsgOomParser]:
    parser = KmsgOomParser()
    out: list[KillRecord] = []
    for i, raw in enumerate(records):
        rec = parse_kmsg_record(raw)
        assert rec is not None, raw
        out += parser.feed(rec, time=float(i), wall=1000.0 + i)
    out += parser.flush(time=-1.0, wall=-1.0)
    return out, parser


def summary(kills: list[KillRecord]) -> list[tuple[int | None, str | None, str | None]]:
    return [(k.pid, k.comm, k.cgroup) for k in kills]


# --------------------------------------------------------------------------- records
def test_record_header_text_and_dictionary_lines() -> None:
    rec = parse_kmsg_record(
        b"6,193,293921,-;acpi PNP0A08:00: _OSC: OS supports [Segments]\n"
        b" SUBSYSTEM=acpi\n DEVICE=+acpi:PNP0A08:00\n"
    )
    assert rec is not None
    assert (rec.prio, rec.seq, rec.usec, rec.flags) == (6, 193, 293921, "-")
    assert (rec.facility, rec.level) == (0, 6)
    assert rec.text == "acpi PNP0A08:00: _OSC: OS supports [Segments]"
    assert rec.fields == {"SUBSYSTEM": "acpi", "DEVICE": "+acpi:PNP0A08:00"}


def test_record_caller_field_and_escapes() -> None:
    rec = parse_kmsg_record("4,7,100,c,caller=T42;bad\\x09tab and \\x5c slash\n")
    assert rec is not None
    assert rec.caller == "T42"
    assert rec.flags == "c"
    assert rec.text == "bad\ttab and \\ slash"


def test_record_text_may_start_with_a_space() -> None:
    # call traces print " <TASK>": body text, not a dictionary line
    rec = parse_kmsg_record("4,347,542255275,-; <TASK>\n")
    assert rec is not None
    assert rec.text == " <TASK>"
    assert rec.continuation == ()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"6,1,2;",
        b"x,1,2,-;text",
        b"6,-1,2,-;t",
        b"6,1;text",
        b"\xff\xfe;;;",
        b"6,1,2,3",
        # found by tests/kills/test_kmsg_fuzz.py: the kernel prints unsigned decimal (u8, u64,
        # u64); int() took signs, spaces, underscores, other scripts' digits and any size
        b"+6,1,2,-;t",
        b" 6,1,2,-;t",
        b"6,1_0,2,-;t",
        "6,\u0663,2,-;t".encode(),
        b"6,1,18446744073709551616,-;t",
        b"6,1,%s,-;t" % (b"9" * 4000),
        b"6,1,%s,-;t" % (b"9" * 5000),
    ],
)
def test_garbage_is_not_a_record(raw: bytes) -> None:
    assert parse_kmsg_record(raw) is None


# --------------------------------------------------------------------------- real records
def test_linux_6_18_hybrid_host() -> None:
    kills, parser = run(fixture_records("linux-6.18-v1-hybrid.kmsg"))
    assert summary(kills) == [(32444, "python3", HOST_CG)]
    k = kills[0]
    assert k.rss == {
        "total_vm": 43292 * 1024,
        "anon_rss": 32512 * 1024,
        "file_rss": 6608 * 1024,
        "shmem_rss": 0,
        "pgtables": 120 * 1024,
    }
    assert (k.uid, k.oom_score_adj) == (0, 0)
    assert k.extra["oom_memcg"] == HOST_CG
    assert k.extra["constraint"] == "CONSTRAINT_MEMCG"
    assert k.extra["invoker"] == "python3"
    assert k.extra["message"] == "Memory cgroup out of memory"
    assert k.extra["kmsg_seq"] == 422
    assert k.source == "kmsg" and k.count_delta == 1
    # the excerpt skips seq 197..343: that is what a gap looks like
    assert parser.gaps == 343 - 197 + 1


def test_linux_6_1_plain_group_and_rate_limited_burst() -> None:
    kills, parser = run(fixture_records("linux-6.1-v2-plain-group-burst.kmsg"))
    assert parser.gaps == 0
    assert summary(kills) == [
        (151, "python3", "/pk-plain"),
        # memory.oom.group: the victim, then every member, the victim again among them
        (154, "python3", "/pk-group"),
        (152, "sleep", "/pk-group"),
        (153, "sleep", "/pk-group"),
        (154, "python3", "/pk-group"),
        # a burst: the first eight kills have their report ...
        *[(pid, "python3", "/pk-burst") for pid in (156, 158, 162, 160, 159, 157, 161, 167)],
        # ... then the report is rate limited and only "Killed process" is printed
        *[(pid, "python3", None) for pid in (168, 163, 166, 164, 169, 165)],
    ]
    assert kills[2].extra["oom_group"] == "/pk-group"
    assert "oom_group" not in kills[1].extra
    assert kills[0].rss["anon_rss"] == 65140 * 1024
    assert all(k.rss and k.uid == 0 for k in kills)


# --------------------------------------------------------------------------- older formats
def test_linux_5_4_kubernetes_pod() -> None:
    kills, _ = run(fixture_records("format-5.4-memcg.kmsg"))
    pod = "/kubepods/burstable/pod6e0c7e3c-4e12-4d33-9a54-2b0b8f1f2a10"
    assert summary(kills) == [(63635, "uwsgi", pod + "/3f2a9c")]
    assert kills[0].extra["oom_memcg"] == pod
    assert kills[0].oom_score_adj == 986
    assert kills[0].rss["shmem_rss"] == 92 * 1024


def test_linux_4_19_sacrificed_child() -> None:
    kills, _ = run(fixture_records("format-4.19-memcg.kmsg"))
    assert summary(kills) == [(94, "mem-worker", "/docker/609e7ec068ac")]
    assert kills[0].extra["chosen_pid"] == 93
    assert kills[0].uid is None and kills[0].oom_score_adj is None
    assert set(kills[0].rss) == {"total_vm", "anon_rss", "file_rss", "shmem_rss"}


def test_linux_4_14_task_in_fragments_and_rate_limit() -> None:
    kills, _ = run(fixture_records("format-4.14-task-in.kmsg"))
    cg = "/kubepods/burstable/pod0f3b/8efb22f5"
    assert summary(kills) == [(9949, "java", cg), (9990, "java", None)]
    assert kills[0].extra["oom_memcg"] == cg


def test_linux_3_10_rhel7_uid_form() -> None:
    kills, _ = run(fixture_records("format-3.10-rhel7.kmsg"))
    assert summary(kills) == [(42452, "memcg_test_1", "/ltp/memcg_test")]
    assert kills[0].uid == 0
    assert kills[0].rss["anon_rss"] == 96 * 1024


def test_global_oom() -> None:
    kills, _ = run(fixture_records("format-5.15-global.kmsg"))
    assert summary(kills) == [(4242, "stress", "/user.slice/user-1000.slice/session-3.scope")]
    assert kills[0].extra["constraint"] == "CONSTRAINT_NONE"
    assert kills[0].extra["message"] == "Out of memory"
    assert "oom_memcg" not in kills[0].extra
    assert kills[0].uid == 1000


# --------------------------------------------------------------------------- edge cases
def test_only_killed_process_line_still_a_kill() -> None:
    kills, _ = run(
        [
            "3,10,5000,-;Memory cgroup out of memory: Killed process 77 (app) total-vm:10kB, "
            "anon-rss:4kB, file-rss:0kB, shmem-rss:0kB, UID:1001 pgtables:8kB oom_score_adj:-5\n"
        ]
    )
    assert summary(kills) == [(77, "app", None)]
    assert kills[0].oom_score_adj == -5 and kills[0].uid == 1001


def test_modern_fragments_are_joined() -> None:
    # a pr_cont line split by another CPU's printk: 'c' fragments, then the '-' end
    records = [
        "4,1,100,-;app invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n",
        "6,2,200,c;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=\n",
        "6,3,210,c;/,mems_allowed=0,oom_memcg=/a/b,task_memcg=\n",
        "6,4,220,-;/a/b/c,task=app,pid=5,uid=0\n",
        "3,5,300,-;Memory cgroup out of memory: Killed process 5 (app) total-vm:1kB\n",
    ]
    kills, _ = run(records)
    assert summary(kills) == [(5, "app", "/a/b/c")]
    assert kills[0].extra["oom_memcg"] == "/a/b"


def test_cgroup_names_with_commas_and_comm_with_parentheses() -> None:
    records = [
        "4,1,100,-;a invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n",
        "6,2,200,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
        "oom_memcg=/x,y,task_memcg=/x,y/z,w,task=we (ird),pid=9,uid=3\n",
        "3,3,300,-;Memory cgroup out of memory: Killed process 9 (we (ird)) total-vm:1kB, "
        "anon-rss:2kB, file-rss:0kB, shmem-rss:0kB, UID:3 pgtables:4kB oom_score_adj:0\n",
    ]
    kills, _ = run(records)
    assert summary(kills) == [(9, "we (ird)", "/x,y/z,w")]
    assert kills[0].extra["oom_memcg"] == "/x,y"


def test_user_space_records_are_ignored() -> None:
    # facility 1 (user): written to /dev/kmsg by a process, not printed by the kernel
    kills, parser = run(["12,1,100,-;Killed process 1 (init) total-vm:1kB\n"])
    assert kills == []
    assert parser.ignored_user == 1


def test_gap_drops_a_stale_context() -> None:
    records = [
        "4,1,100,-;a invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n",
        "6,2,200,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
        "oom_memcg=/old,task_memcg=/old,task=a,pid=9,uid=0\n",
        # records 3..9 overwritten: the kill of pid 9 and whatever came after
        "3,10,300,-;Memory cgroup out of memory: Killed process 9 (a) total-vm:1kB\n",
    ]
    kills, parser = run(records)
    assert summary(kills) == [(9, "a", None)]
    assert parser.gaps == 7


def test_context_expires() -> None:
    records = [
        "6,1,100,-;Task in /t killed as a result of limit of /t\n",
        "3,2,60000000,-;Killed process 9 (a) total-vm:1kB\n",  # a minute later
    ]
    kills, _ = run(records)
    assert summary(kills) == [(9, "a", None)]


def test_oom_reaper_is_not_a_kill() -> None:
    kills, _ = run(
        [
            "6,1,1,-;oom_reaper: reaped process 9 (a), now anon-rss:0kB, file-rss:0kB, "
            "shmem-rss:0kB\n"
        ]
    )
    assert kills == []


# ------------------------------------------------- found by tests/kills/test_kmsg_fuzz.py
@pytest.mark.parametrize(
    "pid",
    [
        "9" * 5000,  # int() raised ValueError out of feed(): past its 4300-digit limit
        "0",
        str(4 * 1024 * 1024 + 1),  # above PID_MAX_LIMIT
        "\u0663",  # ARABIC-INDIC DIGIT THREE: \d matched it, int() took it
    ],
)
def test_killed_line_without_a_pid_is_no_kill(pid: str) -> None:
    kills, _ = run(
        [f"3,1,1,-;Memory cgroup out of memory: Killed process {pid} (x) total-vm:1kB\n"]
    )
    assert kills == []


def test_numbers_no_kernel_prints_are_left_out() -> None:
    kills, _ = run(
        [
            "3,1,1,-;Memory cgroup out of memory: Killed process 7 (x) "
            f"total-vm:{1 << 54}kB, anon-rss:{'9' * 5000}kB, file-rss:1kB, shmem-rss:0kB, "
            f"UID:{(1 << 32) - 1} pgtables:4kB oom_score_adj:1001\n"
        ]
    )
    assert summary(kills) == [(7, "x", None)]
    assert kills[0].rss == {"file_rss": 1024, "shmem_rss": 0, "pgtables": 4096}
    assert (kills[0].uid, kills[0].oom_score_adj) == (None, None)


def test_garbled_oom_kill_and_report_lines_name_no_cgroup() -> None:
    invoked = "4,1,100,-;a invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0\n"
    killed = "3,3,300,-;Memory cgroup out of memory: Killed process 9 (a) total-vm:1kB\n"
    # a cgroup path from the kernel starts at its hierarchy's root: '/'
    kills, _ = run(
        [
            invoked,
            "6,2,200,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
            "mems_allowed=0,oom_memcg=\\x00/a,task_memcg=a/b,task=a,pid=9,uid=0\n",
            killed,
        ]
    )
    assert summary(kills) == [(9, "a", None)]
    assert "oom_memcg" not in kills[0].extra
    kills, _ = run([invoked, "6,2,200,-;Task in t killed as a result of limit of /t\n", killed])
    assert summary(kills) == [(9, "a", None)]
    # an oom-kill line whose pid no kernel prints is garbled as a whole
    kills, _ = run(
        [
            invoked,
            "6,2,200,-;oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/a,task_memcg=/a/b,"
            f"task=a,pid={'9' * 5000},uid=0\n",
            killed,
        ]
    )
    assert summary(kills) == [(9, "a", None)]


# --------------------------------------------------------------------------- fuzz
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_parse_record_never_raises(raw: bytes) -> None:
    rec = parse_kmsg_record(raw)
    if rec is not None:
        assert rec.seq >= 0 and rec.usec >= 0


_line = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "x invoked oom-killer: gfp_mask=0x0, order=0, oom_score_adj=0",
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
            "oom_memcg=/a,task_memcg=/a/b,task=x,pid=3,uid=0",
            "Tasks in /a are going to be killed due to memory.oom.group set",
            "Task in /a killed as a result of limit of /a",
            "Memory cgroup out of memory: Kill process 3 (x) score 1 or sacrifice child",
            "oom-kill:constraint=",
            "Task in ",
            "Killed process (x)",
            "Killed process 99999999999999999999 (x)",
        ]
    ),
    st.builds(
        lambda pid, comm, kb: (
            f"Memory cgroup out of memory: Killed process {pid} ({comm}) "
            f"total-vm:{kb}kB, anon-rss:{kb}kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB "
            "oom_score_adj:0"
        ),
        st.integers(1, 4_194_304),
        st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0xD7FF, blacklist_characters="\n\r"),
            min_size=1,
            max_size=15,
        ),
        st.integers(0, 1 << 40),
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            _line, st.sampled_from(["-", "c", "+"]), st.integers(0, 3), st.integers(0, 2_000_000)
        ),
        max_size=25,
    )
)
def test_fuzz_parser_streams(lines: list[tuple[str, str, int, int]]) -> None:
    parser = KmsgOomParser()
    seq, usec = 0, 0
    kills: list[KillRecord] = []
    for text, flags, skip, dt in lines:
        seq += 1 + skip
        usec += dt
        clean = text.replace("\n", " ")
        rec = parse_kmsg_record(f"{3 if 'Killed' in clean else 6},{seq},{usec},{flags};{clean}\n")
        if rec is None:
            continue
        kills += parser.feed(rec, time=0.0, wall=0.0)
    kills += parser.flush(time=0.0, wall=0.0)
    for k in kills:
        assert k.pid is not None and k.pid >= 0
        assert all(v >= 0 for v in k.rss.values())


@settings(max_examples=200, deadline=None)
@given(
    pid=st.integers(1, 4_194_304),
    comm=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=15),
    rss=st.lists(st.integers(0, 1 << 34), min_size=5, max_size=5),
    uid=st.integers(0, 1 << 31),
    adj=st.integers(-1000, 1000),
)
def test_killed_line_round_trip(pid: int, comm: str, rss: list[int], uid: int, adj: int) -> None:
    escaped = comm.replace("\\", "\\x5c")  # as the kernel writes a backslash
    line = (
        f"3,1,1,-;Memory cgroup out of memory: Killed process {pid} ({escaped}) "
        f"total-vm:{rss[0]}kB, anon-rss:{rss[1]}kB, file-rss:{rss[2]}kB, shmem-rss:{rss[3]}kB, "
        f"UID:{uid} pgtables:{rss[4]}kB oom_score_adj:{adj}\n"
    )
    kills, _ = run([line])
    assert len(kills) == 1
    k = kills[0]
    want: dict[str, Any] = {
        "total_vm": rss[0] * 1024,
        "anon_rss": rss[1] * 1024,
        "file_rss": rss[2] * 1024,
        "shmem_rss": rss[3] * 1024,
        "pgtables": rss[4] * 1024,
    }
    assert (k.pid, k.uid, k.oom_score_adj, k.rss) == (pid, uid, adj, want)
    assert k.comm == comm


# --------------------------------------------------------------------------- older kernels
RHEL6_KILLED = (
    "3,9,5000,-;Killed process 13550, UID 500, (java) total-vm:12466024kB, "
    "anon-rss:7625016kB, file-rss:2608kB\n"
)


@pytest.mark.parametrize(
    ("line", "pid", "comm", "uid", "rss"),
    [
        (
            RHEL6_KILLED,
            13550,
            "java",
            500,
            {"total_vm": 12466024, "anon_rss": 7625016, "file_rss": 2608},
        ),
        (
            "3,9,5000,-;Memory cgroup out of memory: Killed process 7, UID 0, (my app) "
            "total-vm:10kB, anon-rss:4kB, file-rss:0kB\n",
            7,
            "my app",
            0,
            {"total_vm": 10, "anon_rss": 4, "file_rss": 0},
        ),
        (  # upstream 2.6.32: vsz, no uid
            "3,9,5000,-;Killed process 31 (x (y)) vsz:2048kB, anon-rss:1024kB, file-rss:4kB\n",
            31,
            "x (y)",
            None,
            {"total_vm": 2048, "anon_rss": 1024, "file_rss": 4},
        ),
        (  # uid no uid_t holds: the kill stands, the uid does not
            "3,9,5000,-;Killed process 8, UID 4294967295, (a) total-vm:1kB\n",
            8,
            "a",
            None,
            {"total_vm": 1},
        ),
    ],
)
def test_linux_2_6_32_killed_forms(
    line: str, pid: int, comm: str, uid: int | None, rss: dict[str, int]
) -> None:
    kills, _ = run([line])
    assert summary(kills) == [(pid, comm, None)]
    assert kills[0].uid == uid
    assert kills[0].rss == {k: v * 1024 for k, v in rss.items()}


def test_linux_2_6_32_rhel6_global_oom_carries_its_trigger() -> None:
    kills, _ = run(
        [
            "4,1,100,-;java invoked oom-killer: gfp_mask=0x201da, order=0, oom_adj=0, "
            "oom_score_adj=0\n",
            "4,2,110,-;java cpuset=/ mems_allowed=0\n",
            "4,3,120,-;Pid: 13550, comm: java Not tainted 2.6.32-431.el6.x86_64 #1\n",
            "3,4,200,-;Out of memory: Kill process 13550 (java) score 962 or sacrifice child\n",
            RHEL6_KILLED.replace("3,9,", "3,5,"),
        ]
    )
    assert summary(kills) == [(13550, "java", None)]
    assert kills[0].extra["trigger"] == {"comm": "java", "pid": 13550}
    assert kills[0].uid == 500


# (stack dump head, trigger pid): the forms dump_stack printed before 4.19 and after.
STACK_HEADS = [
    ("Pid: 4100, comm: kworker/u8:1 Not tainted 2.6.32-754.el6.x86_64 #1", 4100),
    ("CPU: 2 PID: 4100 Comm: kworker/u8:1 Not tainted 3.10.0-1160.el7.x86_64 #1", 4100),
    ("CPU: 0 PID: 4100 Comm: kworker/u8:1 Tainted: G           O    4.14.0 #1", 4100),
    ("CPU: 1 UID: 0 PID: 4100 Comm: kworker/u8:1 Not tainted 6.13.0 #1", 4100),
    ("CPU: 1 PID: 4100 Comm: someone-else Not tainted 4.14.0 #1", None),  # not the trigger
    ("CPU: 1 PID: 0 Comm: kworker/u8:1 Not tainted 4.14.0 #1", None),  # no pid is 0
]


@pytest.mark.parametrize(("head", "trigger_pid"), STACK_HEADS)
def test_pre_4_19_global_oom_trigger_is_tied_to_the_kill(
    head: str, trigger_pid: int | None
) -> None:
    kills, _ = run(
        [
            "4,1,100,-;kworker/u8:1 invoked oom-killer: gfp_mask=0x24201ca, order=0, "
            "oom_score_adj=0\n",
            f"4,2,110,-;{head}\n",
            "3,3,200,-;Out of memory: Kill process 900 (postgres) score 500 or sacrifice child\n",
            "3,4,210,-;Killed process 901 (postgres) total-vm:100kB, anon-rss:50kB, "
            "file-rss:0kB, shmem-rss:0kB\n",
        ]
    )
    assert summary(kills) == [(901, "postgres", None)]
    assert kills[0].extra["trigger"] == {"comm": "kworker/u8:1", "pid": trigger_pid}
    assert kills[0].extra["invoker"] == "kworker/u8:1"
    assert kills[0].extra["chosen_pid"] == 900


def test_trigger_is_not_carried_into_a_later_rate_limited_kill() -> None:
    kills, _ = run(
        [
            "4,1,100,-;a invoked oom-killer: gfp_mask=0x0, order=0, oom_score_adj=0\n",
            "3,2,200,-;Out of memory: Kill process 9 (b) score 1 or sacrifice child\n",
            "3,3,210,-;Killed process 9 (b) total-vm:1kB\n",
            # the next OOM's report was rate limited: only these two lines
            "3,4,300,-;Out of memory: Kill process 10 (c) score 1 or sacrifice child\n",
            "3,5,310,-;Killed process 10 (c) total-vm:1kB\n",
        ]
    )
    assert summary(kills) == [(9, "b", None), (10, "c", None)]
    assert kills[0].extra["trigger"] == {"comm": "a", "pid": None}
    assert "trigger" not in kills[1].extra


def test_a_report_without_its_kill_line_is_no_kill() -> None:
    kills, _ = run(
        [
            "4,1,100,-;a invoked oom-killer: gfp_mask=0x0, order=0, oom_score_adj=0\n",
            "6,2,200,-;oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/k,task_memcg=/k/c,"
            "task=a,pid=9,uid=0\n",
        ]
    )
    assert kills == []
