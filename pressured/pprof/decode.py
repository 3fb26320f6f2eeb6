"""Go heap profiles decoded: profile.proto (gzip-compressed or raw) into a validated Profile.

    profile = load_profile(data, "heap.pb.gz")      # PprofError naming the source on bad input
    profile.sample_type_names                        # ["alloc_objects", ..., "inuse_space"]

What is kept is what pprof's "functions" granularity needs (ported from the pprof sources that
ship with Go: internal/graph, profile/prune.go):

- A node is a function name. Every Line of a Location is a frame: Line[0] is the innermost
  inlined function, the last Line its outermost caller; a function without a name falls back to
  its object file and start line.
- drop_frames / keep_frames are honoured as pprof's RemoveUninteresting does, with Go's regexp
  syntax and RE2's linear-time matching (pressured.pprof.goregexp): the expressions come from
  whoever served the profile.

The message classes are generated from profile.proto beside this file (_pprof_pb2.py, by
scripts/gen_pprof_pb2.sh); the protobuf runtime is imported on first use only.
"""

from __future__ import annotations

import gzip
import importlib
import io
import logging
import os
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pressured.errors import PprofError
from pressured.pprof.goregexp import GoRegexp, compile_go

log = logging.getLogger("pressured.pprof")

GZIP_MAGIC = b"\x1f\x8b"
MAX_PROFILE_BYTES = 1 << 30
"""Refuse to inflate a profile beyond this (a gzip bomb must not take the daemon down)."""
_INFLATE_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# the decoded profile


@dataclass(frozen=True)
class ValueType:
    """One sample type, e.g. ValueType("inuse_space", "bytes")."""

    type: str
    unit: str


class Profile:
    """A decoded and validated profile; build it with ``load_profile``.

    The protobuf samples are kept as decoded (the values are only read by ``top``), while
    locations and functions are reduced to what pprof's "functions" granularity keeps: for each
    location id, the node ids of its frames, innermost first.
    """

    def __init__(
        self,
        *,
        source: str,
        sample_types: tuple[ValueType, ...],
        default_sample_type: str,
        period_type: ValueType | None,
        period: int,
        time_nanos: int,
        duration_nanos: int,
        comments: tuple[str, ...],
        main_file: str,
        build_id: str,
        samples: Sequence[Any],
        node_names: list[str],
        loc_nodes: dict[int, tuple[int, ...]],
        prune: frozenset[int],
        prune_beneath: frozenset[int],
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.source = source
        self.sample_types = sample_types
        self.default_sample_type = default_sample_type
        self.period_type = period_type
        self.period = period
        self.time_nanos = time_nanos
        self.duration_nanos = duration_nanos
        self.comments = comments
        self.main_file = main_file
        self.build_id = build_id
        self._samples = samples
        self._node_names = node_names
        self._loc_nodes = loc_nodes
        self._prune = prune
        self._prune_beneath = prune_beneath
        self.warnings = warnings
        """What was ignored as go tool pprof ignores it (an unusable drop_frames, say)."""

    @property
    def num_samples(self) -> int:
        return len(self._samples)

    @property
    def sample_type_names(self) -> list[str]:
        return [t.type for t in self.sample_types]

    def sample_index(self, name: str | None) -> int:
        """Index of a sample type by name (pprof's SampleIndexByName); PprofError if unknown."""
        names = self.sample_type_names
        if name is None or name == "":
            if self.default_sample_type:
                for i, t in enumerate(names):
                    if t == self.default_sample_type:
                        return i
            return len(names) - 1
        if re.fullmatch(r"[+-]?\d+", name):
            i = int(name)
            if not 0 <= i < len(names):
                raise PprofError(
                    f"{self.source}: sample index {name} is outside the range [0..{len(names) - 1}]"
                )
            return i
        # pprof accepts "inuse_space" for profiles whose types are "space" and "objects".
        no_inuse = name.removeprefix("inuse_")
        for i, t in enumerate(names):
            if t in (name, no_inuse):
                return i
        raise PprofError(
            f"{self.source}: unknown sample index {name!r}; available: {', '.join(names)}"
        )


def load_profile(
    data: bytes | bytearray, source: str, *, max_bytes: int = MAX_PROFILE_BYTES
) -> Profile:
    """Decode a profile.proto, gzip-compressed (detected by its magic) or raw.

    ``source`` names the input (a path, a URL, a storage key) in every PprofError.
    """
    if data[:2] == GZIP_MAGIC:
        data = _gunzip(data, source, max_bytes)  # a bytearray: no copy to bytes
    pb2 = importlib.import_module("pressured.pprof._pprof_pb2")
    from google.protobuf.message import DecodeError  # noqa: PLC0415 - heavy, lazy

    msg = pb2.Profile()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        # upb reports an allocation that failed (a memory limit, or claims too big for memory)
        # as a decode error; it is not a verdict on the data.
        if "alloc failed" in str(exc).lower():
            raise MemoryError(f"{source}: out of memory decoding the profile ({exc})") from exc
        raise PprofError(f"{source}: not a pprof profile (protobuf decode failed: {exc})") from exc
    return _decode(msg, source)


def _gunzip(data: bytes | bytearray, source: str, max_bytes: int) -> bytearray:
    # In chunks: read(max_bytes + 1) would allocate its whole buffer first, 1 GiB for any profile
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            while len(out) <= max_bytes:
                chunk = f.read(min(_INFLATE_CHUNK, max_bytes + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
    except EOFError as exc:
        raise PprofError(f"{source}: bad gzip data: truncated ({exc})") from exc
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise PprofError(f"{source}: bad gzip data: {exc}") from exc
    if len(out) > max_bytes:
        raise PprofError(f"{source}: profile inflates to more than {max_bytes} bytes; refused")
    return out


def _decode(msg: Any, source: str) -> Profile:
    raw_strings = list(msg.string_table)
    if not raw_strings or raw_strings[0] != b"":
        raise PprofError(
            f"{source}: not a pprof profile (string_table[0] must be empty, "
            f"table has {len(raw_strings)} entries)"
        )
    strings: list[str] = [s.decode("utf-8", "replace") for s in raw_strings]
    n_strings = len(strings)

    def string(index: int, where: str) -> str:
        if not 0 <= index < n_strings:
            raise PprofError(
                f"{source}: string table index {index} out of range in {where} "
                f"(table has {n_strings} entries)"
            )
        return strings[index]

    if len(msg.sample_type) == 0:
        raise PprofError(f"{source}: not a pprof profile (no sample types)")
    sample_types = tuple(
        ValueType(
            string(vt.type, f"sample_type[{i}].type"), string(vt.unit, f"sample_type[{i}].unit")
        )
        for i, vt in enumerate(msg.sample_type)
    )
    period_type = None
    if msg.HasField("period_type"):
        period_type = ValueType(
            string(msg.period_type.type, "period_type.type"),
            string(msg.period_type.unit, "period_type.unit"),
        )
    comments = tuple(string(c, f"comment[{i}]") for i, c in enumerate(msg.comment))
    drop_frames = string(msg.drop_frames, "drop_frames")
    keep_frames = string(msg.keep_frames, "keep_frames")
    default_sample_type = string(msg.default_sample_type, "default_sample_type")

    mapping_files: dict[int, str] = {}
    main_file = build_id = ""
    for i, m in enumerate(msg.mapping):
        if m.id == 0:
            raise PprofError(f"{source}: mapping[{i}] has the reserved id 0")
        if m.id in mapping_files:
            raise PprofError(f"{source}: mapping[{i}] repeats id {m.id}")
        mapping_files[m.id] = string(m.filename, f"mapping[{i}].filename")
        if i == 0:
            main_file = mapping_files[m.id]
            build_id = string(m.build_id, "mapping[0].build_id")

    # Node identity under granularity "functions" (graph.nodeInfo after Aggregate): the function
    # name; a function without a name falls back to its object file and start line.
    node_ids: dict[tuple[str, str, int], int] = {}
    node_names: list[str] = []

    def node(name: str, objfile: str, start_line: int) -> int:
        key = (name, objfile, start_line)
        nid = node_ids.get(key)
        if nid is None:
            nid = node_ids[key] = len(node_names)
            if name:
                node_names.append(name)
            elif objfile:
                node_names.append(f"[{os.path.basename(objfile)}]")
            else:
                node_names.append("<unknown>")
        return nid

    functions: dict[int, tuple[str, int]] = {}
    for i, f in enumerate(msg.function):
        if f.id == 0:
            raise PprofError(f"{source}: function[{i}] has the reserved id 0")
        if f.id in functions:
            raise PprofError(f"{source}: function[{i}] repeats id {f.id}")
        name = string(f.name, f"function[{i}].name")
        string(f.system_name, f"function[{i}].system_name")
        string(f.filename, f"function[{i}].filename")
        functions[f.id] = (name, f.start_line)

    warnings: list[str] = []
    prune_here = _frame_filter(drop_frames, keep_frames, source, warnings)
    loc_nodes: dict[int, tuple[int, ...]] = {}
    prune: set[int] = set()
    prune_beneath: set[int] = set()
    for i, loc in enumerate(msg.location):
        if loc.id == 0:
            raise PprofError(f"{source}: location[{i}] has the reserved id 0")
        if loc.id in loc_nodes:
            raise PprofError(f"{source}: location[{i}] repeats id {loc.id}")
        if loc.mapping_id and loc.mapping_id not in mapping_files:
            raise PprofError(
                f"{source}: location[{i}] names mapping {loc.mapping_id}, which does not exist"
            )
        objfile = mapping_files.get(loc.mapping_id, "")
        lines: list[tuple[str, int]] = []
        for j, line in enumerate(loc.line):
            fn = functions.get(line.function_id)
            if fn is None:
                raise PprofError(
                    f"{source}: location[{i}].line[{j}] names function {line.function_id}, "
                    "which does not exist"
                )
            lines.append(fn)
        if prune_here is not None:
            lines = _prune_location(
                loc.id, lines, prune_here=prune_here, prune=prune, prune_beneath=prune_beneath
            )
        if lines:
            nodes = tuple(node(n, "" if n else objfile, 0 if n else sl) for n, sl in lines)
        else:
            nodes = (node("", objfile, 0),)
        loc_nodes[loc.id] = nodes

    n_types = len(sample_types)
    seen_locations: set[int] = set()
    for i, s in enumerate(msg.sample):
        if len(s.value) != n_types:
            raise PprofError(
                f"{source}: sample[{i}] has {len(s.value)} values for {n_types} sample types"
            )
        seen_locations.update(s.location_id)
    missing = seen_locations.difference(loc_nodes)
    if missing:
        raise PprofError(
            f"{source}: samples name location ids that do not exist: "
            + ", ".join(str(m) for m in sorted(missing)[:10])
        )

    return Profile(
        source=source,
        sample_types=sample_types,
        default_sample_type=default_sample_type,
        period_type=period_type,
        period=msg.period,
        time_nanos=msg.time_nanos,
        duration_nanos=msg.duration_nanos,
        comments=comments,
        main_file=main_file,
        build_id=build_id,
        samples=msg.sample,
        node_names=node_names,
        loc_nodes=loc_nodes,
        prune=frozenset(prune),
        prune_beneath=frozenset(prune_beneath),
        warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------------------------
# drop_frames / keep_frames (pprof profile/prune.go: Prune, RemoveUninteresting)

_RESERVED_NAMES = ("(anonymous namespace)", "operator()")
_BRACKET_RX = re.compile("|".join(re.escape(n) for n in (*_RESERVED_NAMES, "(")))


def _simplify_func(name: str) -> str:
    name = name.removeprefix(".")
    for m in _BRACKET_RX.finditer(name):
        if m.group() not in _RESERVED_NAMES:
            return name[: m.start()]
    return name


def _frame_filter(
    drop: str, keep: str, source: str, warnings: list[str]
) -> Callable[[str], bool] | None:
    """pruneFromHere of pprof's Prune: does a frame of this function name start the pruning?

    None when nothing is pruned. Results are cached per name, as pprof caches them.
    """
    if not drop:
        return None
    # go tool pprof compiles "^(" + pattern + ")$" and calls RemoveUninteresting without looking
    # at its error (internal/driver/fetch.go), so an expression Go's regexp rejects is ignored:
    # no frame is dropped, not even when only keep_frames is bad. The same here, with the
    # PprofError's message kept as a warning (logged, and shown by the CLI and in events).
    try:
        drop_rx = compile_go(drop, "drop_frames", source, whole=True)
        keep_rx: GoRegexp | None = None
        if keep:
            keep_rx = compile_go(keep, "keep_frames", source, whole=True)
    except PprofError as exc:
        message = f"{exc}; ignored, as go tool pprof ignores it: no frame is dropped"
        log.warning("%s", message)
        warnings.append(message)
        return None
    cache: dict[str, bool] = {}

    def prune_here(name: str) -> bool:
        hit = cache.get(name)
        if hit is None:
            simple = _simplify_func(name)
            hit = cache[name] = drop_rx.matches(simple) and (
                keep_rx is None or not keep_rx.matches(simple)
            )
        return hit

    return prune_here


def _prune_location(
    loc_id: int,
    lines: list[tuple[str, int]],
    *,
    prune_here: Callable[[str], bool],
    prune: set[int],
    prune_beneath: set[int],
) -> list[tuple[str, int]]:
    for i in range(len(lines) - 1, -1, -1):
        name = lines[i][0]
        if name and prune_here(name):
            prune_beneath.add(loc_id)
            if i == len(lines) - 1:
                prune.add(loc_id)
                return lines
            return lines[i + 1 :]
    return lines


def pruned_stack(
    locs: Sequence[int], prune: frozenset[int], beneath: frozenset[int]
) -> Sequence[int]:
    """A sample's location ids (leaf first) as drop_frames leaves them.

    Scanned from the root: frames before the first user frame are never pruned.
    """
    found_user = False
    for i in range(len(locs) - 1, -1, -1):
        lid = locs[i]
        if lid not in prune and lid not in beneath:
            found_user = True
            continue
        if not found_user:
            continue
        if lid in prune:
            return locs[i + 1 :]
        return locs[i:]
    return locs
