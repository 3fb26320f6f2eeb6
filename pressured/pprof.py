"""Go heap profiles: parse profile.proto (gzip-compressed or raw) and compute pprof's top-N.

    profile = load_profile(data, "heap.pb.gz")       # PprofError naming the source on bad input
    result = top(profile, "alloc_space", n=20)        # sample type by name; None: the default
    print(format_top(result))                         # the layout of `go tool pprof -top`
    event.extra["pprof_top"] = summarize_top(result)  # [{"function", "flat", "flat_pct", ...}]

The numbers are those of `go tool pprof -top -sample_index=NAME` (granularity "functions"),
ported from the pprof sources that ship with Go (internal/graph, internal/report,
internal/measurement, profile/prune.go):

- A node is a function name. Every Line of a Location is a frame: Line[0] is the innermost
  inlined function, the last Line its outermost caller.
- flat: the value of each sample whose leaf frame (Line[0] of Location[0]) is the function.
- cum: the value of each sample whose stack holds the function, counted once per sample even
  when it recurses.
- total: the sum of the absolute values of every sample; percentages are of that total.
- sample index: default_sample_type when the profile names one, else the last sample type
  (inuse_space for a Go heap profile); a number or a "inuse_"-prefixed legacy name also work.
- drop_frames / keep_frames are honoured as pprof's RemoveUninteresting does.

The protobuf runtime is imported on first use only (DESIGN.md: heavy imports stay lazy).
"""

from __future__ import annotations

import datetime as _dt
import gzip
import importlib
import io
import logging
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from pressured import httpget
from pressured.errors import HttpGetError, PprofError

log = logging.getLogger("pressured.pprof")

GZIP_MAGIC = b"\x1f\x8b"
MAX_PROFILE_BYTES = 1 << 30
"""Refuse to inflate a profile beyond this (a gzip bomb must not take the daemon down)."""

DEFAULT_NODE_FRACTION = 0.005
"""go tool pprof's default -nodefraction: nodes whose cum is below 0.5% of the total are dropped."""
DEFAULT_EDGE_FRACTION = 0.001
"""go tool pprof's default -edgefraction: lighter call edges are dropped (they decide labels)."""


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


def load_profile(data: bytes, source: str, *, max_bytes: int = MAX_PROFILE_BYTES) -> Profile:
    """Decode a profile.proto, gzip-compressed (detected by its magic) or raw.

    ``source`` names the input (a path, a URL, a storage key) in every PprofError.
    """
    if data[:2] == GZIP_MAGIC:
        data = _gunzip(data, source, max_bytes)
    pb2 = importlib.import_module("pressured._pprof_pb2")
    from google.protobuf.message import DecodeError  # noqa: PLC0415 - heavy, lazy

    msg = pb2.Profile()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise PprofError(f"{source}: not a pprof profile (protobuf decode failed: {exc})") from exc
    return _decode(msg, source)


def read_source(
    source: str, *, timeout_s: float = 30.0, max_bytes: int = MAX_PROFILE_BYTES
) -> bytes:
    """The bytes of a profile file or http(s) URL; PprofError naming the source on failure.

    A URL must answer 200 within ``timeout_s`` for the whole download; a gzip body is inflated
    as it arrives (pressured.httpget), so neither it nor what it inflates to exceeds ``max_bytes``
    in memory.
    """
    if source.startswith(("http://", "https://")):
        try:
            return httpget.get(
                source,
                deadline_s=timeout_s,
                max_bytes=max_bytes,
                gunzip="auto",
                follow_redirects=True,
            ).body
        except HttpGetError as exc:
            raise PprofError(str(exc)) from exc
    try:
        with open(source, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise PprofError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise PprofError(f"{source}: more than {max_bytes} bytes; refused")
    return data


def open_profile(source: str, *, timeout_s: float = 30.0) -> Profile:
    """``load_profile`` of a file path or an http(s) URL (e.g. a /debug/pprof/heap endpoint)."""
    return load_profile(read_source(source, timeout_s=timeout_s), source)


def _gunzip(data: bytes, source: str, max_bytes: int) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(max_bytes + 1)
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

    drop_rx, keep_rx = _frame_filters(drop_frames, keep_frames, source)
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
        if drop_rx is not None:
            lines = _prune_location(
                loc.id,
                lines,
                drop_rx=drop_rx,
                keep_rx=keep_rx,
                prune=prune,
                prune_beneath=prune_beneath,
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


def _frame_filters(
    drop: str, keep: str, source: str
) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
    if not drop:
        return None, None
    # pprof ignores the error of RemoveUninteresting: a bad expression means no pruning.
    try:
        drop_rx = re.compile(f"(?:{drop})")
        keep_rx = re.compile(f"(?:{keep})") if keep else None
    except re.error as exc:
        log.warning(
            "%s: drop_frames/keep_frames not a usable expression (%s); ignored", source, exc
        )
        return None, None
    return drop_rx, keep_rx


def _prune_location(
    loc_id: int,
    lines: list[tuple[str, int]],
    *,
    drop_rx: re.Pattern[str],
    keep_rx: re.Pattern[str] | None,
    prune: set[int],
    prune_beneath: set[int],
) -> list[tuple[str, int]]:
    for i in range(len(lines) - 1, -1, -1):
        name = lines[i][0]
        if not name:
            continue
        simple = _simplify_func(name)
        if drop_rx.fullmatch(simple) and (keep_rx is None or not keep_rx.fullmatch(simple)):
            prune_beneath.add(loc_id)
            if i == len(lines) - 1:
                prune.add(loc_id)
                return lines
            return lines[i + 1 :]
    return lines


def _pruned_stack(
    locs: Sequence[int], prune: frozenset[int], beneath: frozenset[int]
) -> Sequence[int]:
    # Scan from the root; frames before the first user frame are never pruned.
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


# --------------------------------------------------------------------------------------------
# top


@dataclass(frozen=True)
class TopRow:
    function: str
    flat: int
    flat_pct: float
    sum_pct: float
    cum: int
    cum_pct: float
    inline: str = ""
    """"inline" when every call into the function was inlined, "partial-inline" when some were."""


@dataclass(frozen=True)
class TopResult:
    source: str
    sample_type: str
    unit: str
    total: int
    rows: tuple[TopRow, ...]
    nodes: int
    """Functions left after the node fraction (the rows before the -n cut)."""
    dropped_nodes: int
    """Functions dropped by the node fraction."""
    node_fraction: float
    sort_cum: bool
    profile: Profile

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sample_type": self.sample_type,
            "unit": self.unit,
            "total": self.total,
            "nodes": self.nodes,
            "dropped_nodes": self.dropped_nodes,
            "sort": "cum" if self.sort_cum else "flat",
            "rows": [
                {
                    "function": r.function,
                    "flat": r.flat,
                    "flat_pct": round(r.flat_pct, 4),
                    "sum_pct": round(r.sum_pct, 4),
                    "cum": r.cum,
                    "cum_pct": round(r.cum_pct, 4),
                    "inline": r.inline,
                }
                for r in self.rows
            ],
        }


def top(
    profile: Profile,
    sample_index: str | None = None,
    n: int = 20,
    sort_cum: bool = False,
    *,
    node_fraction: float = 0.0,
    edge_fraction: float = DEFAULT_EDGE_FRACTION,
) -> TopResult:
    """Per-function flat and cum of one sample type, sorted as pprof sorts them.

    ``n`` <= 0 keeps every row. ``node_fraction`` drops functions whose cum is below that
    fraction of the summed flat values, as ``go tool pprof -nodefraction`` does (its default is
    DEFAULT_NODE_FRACTION; 0 keeps everything). ``edge_fraction`` only decides the "(inline)"
    labels, as -edgefraction does: calls lighter than that fraction are not looked at.
    """
    idx = profile.sample_index(sample_index)
    vtype = profile.sample_types[idx]
    n_nodes = len(profile._node_names)
    flat = [0] * n_nodes
    cum = [0] * n_nodes
    loc_nodes = profile._loc_nodes
    frames_of = loc_nodes.__getitem__
    prune, beneath = profile._prune, profile._prune_beneath
    pruning = bool(prune or beneath)
    total = 0
    for s in profile._samples:
        v = s.value[idx]
        if not v:
            continue
        total += abs(v)
        locs: Sequence[int] = s.location_id
        if pruning:
            locs = _pruned_stack(list(locs), prune, beneath)
        if not locs:
            continue
        flat[loc_nodes[locs[0]][0]] += v
        for node in set(chain.from_iterable(map(frames_of, locs))):
            cum[node] += v

    present = [i for i in range(n_nodes) if flat[i] or cum[i]]
    cutoff = abs(int(sum(flat[i] for i in present) * node_fraction))
    kept = [i for i in present if abs(cum[i]) >= cutoff]
    names = profile._node_names
    if sort_cum:
        kept.sort(key=lambda i: (-abs(cum[i]), names[i], -abs(flat[i]), i))
    else:
        kept.sort(key=lambda i: (-abs(flat[i]), names[i], -abs(cum[i]), i))
    shown = kept[:n] if n > 0 else kept
    edge_cutoff = abs(int(sum(flat[i] for i in present) * edge_fraction))
    labels = _inline_labels(profile, idx, shown, edge_cutoff)

    rows: list[TopRow] = []
    flat_sum = 0
    for i in shown:
        flat_sum += flat[i]
        rows.append(
            TopRow(
                function=names[i],
                flat=flat[i],
                flat_pct=_ratio(flat[i], total),
                sum_pct=_ratio(flat_sum, total),
                cum=cum[i],
                cum_pct=_ratio(cum[i], total),
                inline=labels.get(i, ""),
            )
        )
    return TopResult(
        source=profile.source,
        sample_type=vtype.type,
        unit=vtype.unit,
        total=total,
        rows=tuple(rows),
        nodes=len(kept),
        dropped_nodes=len(present) - len(kept),
        node_fraction=node_fraction,
        sort_cum=sort_cum,
        profile=profile,
    )


def _inline_labels(
    profile: Profile, idx: int, shown: list[int], edge_cutoff: int
) -> dict[int, str]:
    # report.TextItems labels a row "(inline)" when its incoming call edges are inline ones, and
    # "(partial-inline)" when some are. As in graph.newGraph rebuilt over the shown nodes: an
    # edge joins consecutive shown frames of a sample (root to leaf, hidden frames skipped), it is
    # inline when the callee is an inner Line of its Location, counted once per sample (the first
    # occurrence decides), stays inline only if it always is, and edges lighter than the cutoff
    # are dropped (TrimLowFrequencyEdges).
    kept = set(shown)
    kept_frames: dict[int, tuple[tuple[int, bool], ...]] = {}
    for lid, frames in profile._loc_nodes.items():
        last = len(frames) - 1
        kept_frames[lid] = tuple(
            (frames[k], k != last) for k in range(last, -1, -1) if frames[k] in kept
        )
    frames_of = kept_frames.__getitem__
    prune, beneath = profile._prune, profile._prune_beneath
    pruning = bool(prune or beneath)
    weight: dict[tuple[int, int], int] = {}
    inline: dict[tuple[int, int], bool] = {}
    for s in profile._samples:
        v = s.value[idx]
        if not v:
            continue
        locs: Sequence[int] = s.location_id
        if pruning:
            locs = _pruned_stack(list(locs), prune, beneath)
        stack = list(chain.from_iterable(map(frames_of, reversed(locs))))
        if len(stack) < 2:
            continue
        seen: dict[tuple[int, int], bool] = {}
        parent = stack[0][0]
        for node, is_inline in stack[1:]:
            if node != parent:
                seen.setdefault((parent, node), is_inline)
            parent = node
        for edge, is_inline in seen.items():
            weight[edge] = weight.get(edge, 0) + v
            inline[edge] = inline.get(edge, True) and is_inline
    labels: dict[int, str] = {}
    partial: set[int] = set()
    for edge, w in weight.items():
        if abs(w) < edge_cutoff:
            continue
        callee = edge[1]
        if inline[edge]:
            labels[callee] = "inline"
        else:
            partial.add(callee)
    return {node: "partial-inline" if node in partial else "inline" for node in labels}


def _ratio(value: int, total: int) -> float:
    return abs(value / total) * 100 if total else 0.0


# --------------------------------------------------------------------------------------------
# units and text (pprof internal/measurement and report.printText)

_Unit = tuple[str, tuple[str, ...], float]
_UNIT_TYPES: tuple[tuple[tuple[_Unit, ...], tuple[str, float]], ...] = (
    (
        (
            ("B", ("b", "byte"), 1.0),
            ("kB", ("kb", "kbyte", "kilobyte"), float(1 << 10)),
            ("MB", ("mb", "mbyte", "megabyte"), float(1 << 20)),
            ("GB", ("gb", "gbyte", "gigabyte"), float(1 << 30)),
            ("TB", ("tb", "tbyte", "terabyte"), float(1 << 40)),
            ("PB", ("pb", "pbyte", "petabyte"), float(1 << 50)),
        ),
        ("B", 1.0),
    ),
    (
        (
            ("ns", ("ns", "nanosecond"), 1.0),
            ("us", ("μs", "us", "microsecond"), 1e3),
            ("ms", ("ms", "millisecond"), 1e6),
            ("s", ("s", "sec", "second"), 1e9),
            ("hrs", ("hour", "hr"), 3600e9),
        ),
        ("s", 1e9),
    ),
    (
        (
            ("n*GCU", ("nanogcu",), 1e-9),
            ("u*GCU", ("microgcu",), 1e-6),
            ("m*GCU", ("milligcu",), 1e-3),
            ("GCU", ("gcu",), 1.0),
            ("k*GCU", ("kilogcu",), 1e3),
            ("M*GCU", ("megagcu",), 1e6),
            ("G*GCU", ("gigagcu",), 1e9),
            ("T*GCU", ("teragcu",), 1e12),
            ("P*GCU", ("petagcu",), 1e15),
        ),
        ("GCU", 1.0),
    ),
)


def _sniff(units: tuple[_Unit, ...], unit: str) -> _Unit | None:
    unit = unit.lower()
    if len(unit) > 2:
        unit = unit.removesuffix("s")
    for u in units:
        if unit in u[1]:
            return u
    return None


def scale(value: int, from_unit: str, to_unit: str) -> tuple[float, str]:
    """pprof measurement.Scale: ``to_unit`` "minimum"/"auto" picks the largest unit <= value."""
    if value < 0:
        v, u = scale(-value, from_unit, to_unit)
        return -v, u
    for units, (default_name, default_factor) in _UNIT_TYPES:
        src = _sniff(units, from_unit)
        if src is None:
            continue
        base = float(value) * src[2]
        if to_unit in ("minimum", "auto"):
            factor, name = 0.0, ""
            for unit_name, _, unit_factor in units:
                if unit_factor >= factor and base / unit_factor >= 1.0:
                    factor, name = unit_factor, unit_name
            if factor:
                return base / factor, name
            return base / default_factor, default_name
        dst = _sniff(units, to_unit)
        if dst is None:
            return base / default_factor, default_name
        return base / dst[2], dst[0]
    if to_unit in ("count", "sample", "unit", "minimum", "auto"):
        return float(value), ""
    return float(value), to_unit


def format_value(value: int, unit: str, to_unit: str = "auto") -> str:
    """pprof measurement.ScaledLabel, e.g. format_value(17301504, "bytes") == "16.50MB"."""
    v, u = scale(value, unit, to_unit)
    text = f"{v:.2f}".removesuffix(".00")
    if text in ("0", "-0"):
        return "0"
    return text + u


def format_percent(value: int, total: int) -> str:
    """pprof measurement.Percentage: width 6, two digits at least."""
    ratio = _ratio(value, total)
    if 99.95 <= ratio <= 100.05:
        return "  100%"
    if ratio >= 1.0:
        return f"{ratio:5.2f}%"
    return f"{ratio:5.2g}%"


def _output_unit(result: TopResult) -> str:
    # report.selectOutputUnit: the unit of the smallest shown value, unless that is 100 times
    # smaller than the total; then one that shows it down to 0.01.
    min_value = 0
    for r in result.rows:
        v = abs(r.flat) or abs(r.cum)
        if v and (min_value == 0 or v < min_value):
            min_value = v
    max_value = result.total
    if min_value == 0:
        min_value = max_value
    _, min_unit = scale(min_value, result.unit, "minimum")
    _, max_unit = scale(max_value, result.unit, "minimum")
    unit = min_unit
    if min_unit != max_unit and min_value * 100 < max_value:
        _, unit = scale(100 * min_value, result.unit, "minimum")
    return unit or result.unit


def format_top(result: TopResult) -> str:
    """The report of ``go tool pprof -top``: header lines, then one row per function."""
    p = result.profile
    out_unit = _output_unit(result) if result.rows else result.unit

    def fmt(v: int) -> str:
        return format_value(v, result.unit, out_unit)

    lines: list[str] = []
    if p.main_file:
        lines.append("File: " + os.path.basename(p.main_file))
    if p.build_id:
        lines.append("Build ID: " + p.build_id)
    lines.extend(c for c in p.comments if not c.startswith("#"))
    lines.append("Type: " + result.sample_type)
    if p.time_nanos:
        # current pprof's layout "2006-01-02 15:04:05 MST" in local time (older releases
        # printed "Jan 2, 2006 at 3:04pm (MST)")
        t = _dt.datetime.fromtimestamp(p.time_nanos / 1e9).astimezone()
        lines.append(f"Time: {t:%Y-%m-%d %H:%M:%S} {t.tzname() or 'UTC'}")
    if p.duration_nanos:
        total_ns, total_unit = scale(result.total, result.unit, "nanoseconds")
        ratio = ""
        if total_unit == "ns" and total_ns:
            ratio = "(" + format_percent(int(total_ns), p.duration_nanos) + ")"
        lines.append(
            f"Duration: {format_value(p.duration_nanos, 'nanoseconds')}, "
            f"Total samples = {fmt(result.total)} {ratio}"
        )
    flat_sum = sum(r.flat for r in result.rows)
    lines.append(
        f"Showing nodes accounting for {fmt(flat_sum)}, "
        f"{format_percent(flat_sum, result.total).strip()} of {fmt(result.total)} total"
    )
    if result.total:
        if result.dropped_nodes:
            plural = "s" if result.dropped_nodes > 1 else ""
            cutoff = abs(int(result.total * result.node_fraction))
            lines.append(f"Dropped {result.dropped_nodes} node{plural} (cum <= {fmt(cutoff)})")
        if 0 < len(result.rows) < result.nodes:
            lines.append(f"Showing top {len(result.rows)} nodes out of {result.nodes}")
    lines.append(f"{'flat':>10} {'flat':>5}% {'sum':>5}% {'cum':>10} {'cum':>5}%")
    flat_sum = 0
    for r in result.rows:
        flat_sum += r.flat
        inline = f" ({r.inline})" if r.inline else ""
        lines.append(
            f"{fmt(r.flat):>10} {format_percent(r.flat, result.total)} "
            f"{format_percent(flat_sum, result.total)} {fmt(r.cum):>10} "
            f"{format_percent(r.cum, result.total)}  {r.function}{inline}"
        )
    return "\n".join(lines) + "\n"


def summarize_top(result: TopResult, k: int = 3) -> list[dict[str, Any]]:
    """The first ``k`` rows as plain data for events (``event.extra["pprof_top"]``)."""
    return [
        {
            "function": r.function,
            "flat": r.flat,
            "flat_pct": round(r.flat_pct, 2),
            "cum": r.cum,
            "cum_pct": round(r.cum_pct, 2),
            "unit": result.unit,
            "sample_type": result.sample_type,
        }
        for r in result.rows[:k]
    ]


def summary_text(summary: Sequence[dict[str, Any]]) -> str:
    """One line for logs and Kubernetes Event messages, e.g.
    "main.(*leakyCache).grow 16.50MB (98.24%), main.churnBuffers 64.09kB (0.37%)"."""
    return ", ".join(
        f"{e['function']} {format_value(int(e['flat']), str(e['unit']))} ({e['flat_pct']:.2f}%)"
        for e in summary
    )
