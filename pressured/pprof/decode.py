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

The samples are decoded into arrays by pressured.pprof.samples (numpy); the rest of the message
by the protobuf runtime, through ProfileEncodedSamples, which leaves each sample encoded. The
message classes are generated from profile.proto beside this file (_pprof_pb2.py, by
scripts/gen_pprof_pb2.sh); the protobuf runtime and numpy are imported on first use only.
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
from typing import TYPE_CHECKING, Any

from pressured.errors import PprofError
from pressured.pprof.goregexp import GoRegexp, compile_go

if TYPE_CHECKING:
    from pressured.pprof.samples import SampleTable

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

    Locations are reduced to what pprof's "functions" granularity keeps: location ``i`` (its
    index in the sorted location ids) has the frames ``frame_nodes[frame_ptr[i]:frame_ptr[i+1]]``,
    node ids innermost first; ``frame_inner`` is true for all but a location's outermost Line.
    The samples are arrays (pressured.pprof.samples.SampleTable) of those location indices.
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
        drop_frames: str,
        keep_frames: str,
        table: SampleTable,
        node_names: list[str],
        node_keys: list[tuple[str, str, int]],
        frame_ptr: Any,
        frame_nodes: Any,
        frame_inner: Any,
        prune: Any,
        prune_beneath: Any,
        merge_keys: MergeKeys | None = None,
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
        self.drop_frames = drop_frames
        self.keep_frames = keep_frames
        self.table = table
        self.node_names = node_names
        self.node_keys = node_keys
        """(function name, object file, start line) of each node: what makes two the same."""
        self.frame_ptr = frame_ptr
        self.frame_nodes = frame_nodes
        self.frame_inner = frame_inner
        self.prune = prune
        """Per location: drop_frames prunes the location itself (pprof's prune map)."""
        self.prune_beneath = prune_beneath
        """Per location: drop_frames prunes what is beneath it (pprof's pruneBeneath map)."""
        self.merge_keys = merge_keys
        self.warnings = warnings
        """What was ignored as go tool pprof ignores it (an unusable drop_frames, say)."""

    @property
    def num_samples(self) -> int:
        return len(self.table)

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
    data: bytes | bytearray,
    source: str,
    *,
    max_bytes: int = MAX_PROFILE_BYTES,
    frames: tuple[str, str] | None = None,
    merge_keys: bool = False,
) -> Profile:
    """Decode a profile.proto, gzip-compressed (detected by its magic) or raw.

    ``source`` names the input (a path, a URL, a storage key) in every PprofError. ``frames``
    replaces the profile's own (drop_frames, keep_frames): a diff's base is pruned with the
    expressions of the newer profile, as pprof prunes the merged profile. ``merge_keys`` also
    keeps what pprof's Merge compares samples by (pressured.pprof.diff needs it).
    """
    if data[:2] == GZIP_MAGIC:
        data = _gunzip(data, source, max_bytes)  # a bytearray: no copy to bytes
    pb2 = importlib.import_module("pressured.pprof._pprof_pb2")
    from google.protobuf.message import DecodeError  # noqa: PLC0415 - heavy, lazy

    msg = pb2.ProfileEncodedSamples()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        # upb reports an allocation that failed (a memory limit, or claims too big for memory)
        # as a decode error; it is not a verdict on the data.
        if "alloc failed" in str(exc).lower():
            raise MemoryError(f"{source}: out of memory decoding the profile ({exc})") from exc
        raise PprofError(f"{source}: not a pprof profile (protobuf decode failed: {exc})") from exc
    del data  # the inflated copy (upb holds what it needs)
    return _decode(msg, source, frames, merge_keys)


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


def _decode(
    msg: Any, source: str, frames: tuple[str, str] | None, with_merge_keys: bool
) -> Profile:
    import numpy as np  # noqa: PLC0415 - heavy, lazy

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
    if frames is not None:
        drop_frames, keep_frames = frames
    default_sample_type = string(msg.default_sample_type, "default_sample_type")

    mapping_files: dict[int, str] = {}
    mapping_keys: dict[int, tuple[int, tuple[int, int, str]]] = {}
    main_file = build_id = ""
    for i, m in enumerate(msg.mapping):
        if m.id == 0:
            raise PprofError(f"{source}: mapping[{i}] has the reserved id 0")
        if m.id in mapping_files:
            raise PprofError(f"{source}: mapping[{i}] repeats id {m.id}")
        mapping_files[m.id] = string(m.filename, f"mapping[{i}].filename")
        mapping_build_id = string(m.build_id, f"mapping[{i}].build_id")
        if i == 0:
            main_file = mapping_files[m.id]
            build_id = mapping_build_id
        if with_merge_keys:
            # pprof's mappingKey: the size rounded up to 4 KiB, the offset, the build id or file
            size = (m.memory_limit - m.memory_start + 0xFFF) // 0x1000 * 0x1000
            ident = mapping_build_id or mapping_files[m.id]
            mapping_keys[m.id] = (m.memory_start, (size, m.file_offset, ident))

    # Node identity under granularity "functions" (graph.nodeInfo after Aggregate): the function
    # name; a function without a name falls back to its object file and start line.
    node_ids: dict[tuple[str, str, int], int] = {}
    node_names: list[str] = []
    node_keys: list[tuple[str, str, int]] = []

    def node(name: str, objfile: str, start_line: int) -> int:
        key = (name, objfile, start_line)
        nid = node_ids.get(key)
        if nid is None:
            nid = node_ids[key] = len(node_names)
            node_keys.append(key)
            if name:
                node_names.append(name)
            elif objfile:
                node_names.append(f"[{os.path.basename(objfile)}]")
            else:
                node_names.append("<unknown>")
        return nid

    functions: dict[int, tuple[str, int]] = {}
    function_keys: dict[int, tuple[str, str, str, int]] = {}
    for i, f in enumerate(msg.function):
        if f.id == 0:
            raise PprofError(f"{source}: function[{i}] has the reserved id 0")
        if f.id in functions:
            raise PprofError(f"{source}: function[{i}] repeats id {f.id}")
        name = string(f.name, f"function[{i}].name")
        system_name = string(f.system_name, f"function[{i}].system_name")
        filename = string(f.filename, f"function[{i}].filename")
        functions[f.id] = (name, f.start_line)
        if with_merge_keys:
            function_keys[f.id] = (name, system_name, filename, f.start_line)

    from pressured.pprof.samples import LocationIndex, decode_samples  # noqa: PLC0415

    warnings: list[str] = []
    prune_here = _frame_filter(drop_frames, keep_frames, source, warnings)
    locations = list(msg.location)
    ids = [loc.id for loc in locations]
    if 0 in ids or len(set(ids)) != len(ids):
        seen_ids: set[int] = set()
        for i, lid in enumerate(ids):
            if lid == 0:
                raise PprofError(f"{source}: location[{i}] has the reserved id 0")
            if lid in seen_ids:
                raise PprofError(f"{source}: location[{i}] repeats id {lid}")
            seen_ids.add(lid)
    index = LocationIndex(ids)
    n_locs = len(index)
    frame_count = np.zeros(n_locs, dtype=np.int64)
    frames_of: list[tuple[int, ...]] = [()] * n_locs
    prune = np.zeros(n_locs, dtype=bool)
    prune_beneath = np.zeros(n_locs, dtype=bool)
    loc_keys: list[Any] = [None] * n_locs
    position = index.lookup(np.array(ids, dtype=np.uint64)).tolist()
    del ids
    # (function id, mapping id) -> node: a function without a name is told apart by its file
    fn_nodes: dict[tuple[int, int], int] = {}
    for i, loc in enumerate(locations):
        mid = loc.mapping_id
        if mid and mid not in mapping_files:
            raise PprofError(f"{source}: location[{i}] names mapping {mid}, which does not exist")
        objfile = mapping_files.get(mid, "")
        k = position[i]
        fids = [line.function_id for line in loc.line]
        if with_merge_keys:
            start, mkey = mapping_keys.get(mid, (0, None))
            loc_keys[k] = (
                loc.address - start,
                mkey,
                loc.is_folded,
                tuple((function_keys.get(ln.function_id), ln.line, ln.column) for ln in loc.line),
            )
        if prune_here is None:
            nodes_list = []
            for j, fid in enumerate(fids):
                nid = fn_nodes.get((fid, mid))
                if nid is None:
                    fn = functions.get(fid)
                    if fn is None:
                        raise PprofError(
                            f"{source}: location[{i}].line[{j}] names function {fid}, "
                            "which does not exist"
                        )
                    name, sl = fn
                    nid = fn_nodes[fid, mid] = node(
                        name, "" if name else objfile, 0 if name else sl
                    )
                nodes_list.append(nid)
            nodes = tuple(nodes_list) if nodes_list else (node("", objfile, 0),)
        else:
            lines: list[tuple[str, int]] = []
            for j, fid in enumerate(fids):
                fn = functions.get(fid)
                if fn is None:
                    raise PprofError(
                        f"{source}: location[{i}].line[{j}] names function {fid}, "
                        "which does not exist"
                    )
                lines.append(fn)
            lines = _prune_location(
                k, lines, prune_here=prune_here, prune=prune, prune_beneath=prune_beneath
            )
            if lines:
                nodes = tuple(node(n, "" if n else objfile, 0 if n else sl) for n, sl in lines)
            else:
                nodes = (node("", objfile, 0),)
        frames_of[k] = nodes
        frame_count[k] = len(nodes)
    del locations
    frame_ptr = np.zeros(n_locs + 1, dtype=np.int64)
    np.cumsum(frame_count, out=frame_ptr[1:])
    frame_nodes = np.fromiter(
        (n for nodes in frames_of for n in nodes), dtype=np.int32, count=int(frame_ptr[-1])
    )
    frame_inner = np.ones(len(frame_nodes), dtype=bool)
    frame_inner[frame_ptr[1:][frame_count > 0] - 1] = False
    del frames_of

    table = decode_samples(msg.sample, len(sample_types), index, source)
    merge_keys = None
    if with_merge_keys:
        label_ids, label_names = _label_keys(msg.sample, table.labelled, strings, source)
        merge_keys = MergeKeys(loc_keys, label_ids, label_names)

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
        drop_frames=drop_frames,
        keep_frames=keep_frames,
        table=table,
        node_names=node_names,
        node_keys=node_keys,
        frame_ptr=frame_ptr,
        frame_nodes=frame_nodes,
        frame_inner=frame_inner,
        prune=prune,
        prune_beneath=prune_beneath,
        merge_keys=merge_keys,
        warnings=tuple(warnings),
    )


@dataclass(frozen=True)
class MergeKeys:
    """What pprof's Merge tells samples apart by (profile/merge.go): each location's key
    (address in its mapping, the mapping's key, folded, its lines' functions, lines and columns)
    and each sample's labels, with strings in place of string table indices."""

    locations: list[Any]
    labels: Any
    """Per sample, an id of its labels (int64; 0: none) from ``label_names``."""
    label_names: list[Any]


def _label_keys(
    encoded: Sequence[bytes], labelled: Any, strings: list[str], source: str
) -> tuple[Any, list[Any]]:
    # As pprof's postDecode builds Label and NumLabel/NumUnit, then sampleKey sorts them by key.
    # Only the samples that have labels are parsed again; equal label sets share one id.
    import numpy as np  # noqa: PLC0415

    pb2 = importlib.import_module("pressured.pprof._pprof_pb2")
    n = len(strings)

    def text(index: int) -> str:
        if not 0 <= index < n:
            raise PprofError(f"{source}: string table index {index} out of range in a label")
        return strings[index]

    names: list[Any] = [()]
    ids: dict[Any, int] = {(): 0}
    out = np.zeros(len(labelled), dtype=np.int64)
    for i in np.flatnonzero(labelled).tolist():
        str_labels: dict[str, list[str]] = {}
        num_labels: dict[str, list[int]] = {}
        num_units: dict[str, list[str]] = {}
        for label in pb2.Sample.FromString(encoded[i]).label:
            key = text(label.key)
            if label.str:
                str_labels.setdefault(key, []).append(text(label.str))
            elif label.num or label.num_unit:
                nums = num_labels.setdefault(key, [])
                if label.num_unit:
                    units = num_units.setdefault(key, [])
                    units.extend([""] * (len(nums) - len(units)))
                    units.append(text(label.num_unit))
                nums.append(label.num)
        canonical = (
            tuple(sorted((k, tuple(v)) for k, v in str_labels.items())),
            tuple(
                sorted(
                    (k, tuple(v), tuple(_padded(num_units.get(k, []), len(v))))
                    for k, v in num_labels.items()
                )
            ),
        )
        if canonical == ((), ()):
            continue
        label_id = ids.get(canonical)
        if label_id is None:
            label_id = ids[canonical] = len(names)
            names.append(canonical)
        out[i] = label_id
    return out, names


def _padded(units: list[str], n: int) -> list[str]:
    return units + [""] * (n - len(units)) if units else units


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
    loc: int,
    lines: list[tuple[str, int]],
    *,
    prune_here: Callable[[str], bool],
    prune: Any,
    prune_beneath: Any,
) -> list[tuple[str, int]]:
    for i in range(len(lines) - 1, -1, -1):
        name = lines[i][0]
        if name and prune_here(name):
            prune_beneath[loc] = True
            if i == len(lines) - 1:
                prune[loc] = True
                return lines
            return lines[i + 1 :]
    return lines
