"""The samples of a profile, decoded all at once into arrays (numpy) instead of one object each.

    table = decode_samples(encoded, n_types, locations, source)
    table.values     # int64 (n_samples, n_types)
    table.loc_ptr    # int64 (n_samples + 1): sample i's stack is locs[loc_ptr[i]:loc_ptr[i + 1]]
    table.locs       # int32, leaf first: indices into ``locations`` (the sorted location ids)

Why: a 21 MB (gzip) Go heap profile holds about 560,000 samples and 15 million location ids. A
Python object per sample (upb's message wrappers, a list of ids, a set of frames) cost 5 s of
the 6.7 s that `pressured pprof top` took (issue 13). Every field of a Sample is a varint on the
wire (location_id and value, packed or not; Label, a message of varints), so a run of encoded
samples is a run of varints: it is cut and decoded with array operations, and the fields of all
samples are found together, one field of every sample per step.

A sample of another shape (a fixed-width or group field, an over-long varint, more fields than
MAX_WALK, a label with a field that is not a varint) is decoded by the protobuf runtime alone,
which also names what is wrong with a sample that is not valid protobuf. Work is done CHUNK
samples at a time, so the temporary arrays stay small whatever the size of the profile.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pressured.errors import PprofError

CHUNK = 1 << 15
"""Samples decoded per step (about 3 MB of encoded samples, 40 MB of arrays, in a big profile)."""
MAX_WALK = 64
"""Fields of one sample found by array steps; a sample with more is decoded alone."""
_MAX_FIELD = (1 << 29) - 1
_LOC, _VALUE, _LABEL = 1, 2, 3

Int64s = npt.NDArray[np.int64]
Int32s = npt.NDArray[np.int32]


@dataclass(frozen=True)
class SampleTable:
    values: Int64s
    loc_ptr: Int64s
    locs: Int32s
    labelled: npt.NDArray[np.bool_]
    """Samples with at least one Label field."""

    def __len__(self) -> int:
        return int(self.values.shape[0])


class LocationIndex:
    """Location id -> its index in the sorted ids: a table when ids are dense (Go's are 1..N)."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = np.array(sorted(ids), dtype=np.uint64)
        top = int(self.ids[-1]) if len(self.ids) else 0
        self._table: Int32s | None = None
        if top <= 4 * len(self.ids) + 1024:
            table = np.full(top + 1, -1, dtype=np.int32)
            table[self.ids.astype(np.int64)] = np.arange(len(self.ids), dtype=np.int32)
            self._table = table

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, ids: npt.NDArray[np.uint64]) -> Int32s:
        """Index of each id, -1 for an id that is not a location."""
        if self._table is not None:
            size = len(self._table)
            inside = ids < np.uint64(size)
            out = np.full(len(ids), -1, dtype=np.int32)
            out[inside] = self._table[ids[inside].astype(np.int64)]
            return out
        pos = np.searchsorted(self.ids, ids)
        pos_ok = np.minimum(pos, max(len(self.ids) - 1, 0))
        found = (pos < len(self.ids)) & (self.ids[pos_ok] == ids) if len(self.ids) else pos < 0
        return np.where(found, pos, -1).astype(np.int32)


def decode_samples(
    encoded: Sequence[bytes], n_types: int, locations: LocationIndex, source: str
) -> SampleTable:
    """Decode encoded Sample messages; PprofError (naming ``source``) for bad ones.

    Checks what pprof's CheckValid checks of a sample: one value per sample type, and location
    ids that exist.
    """
    values: list[Int64s] = []
    counts: list[Int64s] = []
    locs: list[Int32s] = []
    labelled: list[npt.NDArray[np.bool_]] = []
    missing: set[int] = set()
    for first in range(0, len(encoded), CHUNK):
        chunk = list(encoded[first : first + CHUNK])
        v, c, ids, has_labels = _decode_chunk(chunk, n_types, first, source)
        index = locations.lookup(ids)
        bad = index < 0
        if bad.any():
            missing.update(int(i) for i in np.unique(ids[bad])[:10])
        values.append(v)
        counts.append(c)
        locs.append(index)
        labelled.append(has_labels)
    if missing:
        raise PprofError(
            f"{source}: samples name location ids that do not exist: "
            + ", ".join(str(m) for m in sorted(missing)[:10])
        )
    loc_ptr = np.zeros(len(encoded) + 1, dtype=np.int64)
    if counts:
        np.cumsum(np.concatenate(counts), out=loc_ptr[1:])
    return SampleTable(
        values=np.concatenate(values) if values else np.zeros((0, n_types), dtype=np.int64),
        loc_ptr=loc_ptr,
        locs=np.concatenate(locs) if locs else np.zeros(0, dtype=np.int32),
        labelled=np.concatenate(labelled) if labelled else np.zeros(0, dtype=bool),
    )


def _decode_chunk(
    chunk: list[bytes], n_types: int, first: int, source: str
) -> tuple[Int64s, Int64s, npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """(values (m, n_types), location ids per sample, location ids, has labels) of m samples."""
    m = len(chunk)
    lengths = np.fromiter(map(len, chunk), dtype=np.int64, count=m)
    bounds = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    blob = np.frombuffer(b"".join(chunk), dtype=np.uint8)
    odd = np.zeros(m, dtype=bool)  # decoded alone, by the protobuf runtime

    # Varints: a byte below 0x80 ends one. A varint cut by the end of its sample is an odd
    # sample; ending it there keeps every token inside one sample.
    ends = blob < 0x80
    nonempty = np.flatnonzero(lengths)
    last_bytes = bounds[nonempty + 1] - 1
    odd[nonempty[~ends[last_bytes]]] = True
    ends[last_bytes] = True
    tok_end = np.flatnonzero(ends)
    del ends
    tok_start = np.empty_like(tok_end)
    tok_start[:1] = 0
    tok_start[1:] = tok_end[:-1] + 1
    tok_len = tok_end - tok_start + 1
    odd[_sample_of(bounds, tok_start[tok_len > 10])] = True
    val = (blob[tok_start] & 0x7F).astype(np.uint64)
    sel = np.flatnonzero(tok_len > 1)
    for k in range(1, 10):
        if not len(sel):
            break
        byte = (blob[tok_start[sel] + k] & 0x7F).astype(np.uint64)
        val[sel] |= byte << np.uint64(7 * k)
        sel = sel[tok_len[sel] > k + 1]
    n_tok = len(tok_start)
    ts = np.searchsorted(tok_start, bounds[:-1])
    te = np.searchsorted(tok_start, bounds[1:])

    # Walk the fields of every sample together: tag, then a varint (wire type 0) or a length
    # and that many bytes (wire type 2), which must end on a token boundary.
    rec_sample: list[Int64s] = []
    rec_field: list[npt.NDArray[np.uint64]] = []
    rec_from: list[Int64s] = []
    rec_to: list[Int64s] = []
    act = np.flatnonzero((ts < te) & ~odd)
    pos = ts[act]
    for _ in range(MAX_WALK):
        if not len(act):
            break
        end = te[act]
        tag = val[pos]
        wire = tag & np.uint64(7)
        field = tag >> np.uint64(3)
        arg = np.minimum(pos + 1, n_tok - 1)
        ok = (pos + 1 < end) & (field > 0) & (field <= _MAX_FIELD)
        packed = wire == 2
        ok &= packed | (wire == 0)
        nxt = pos + 2
        frm = pos + 1
        # wire type 2: the payload starts after the length token and ends L bytes on
        room = bounds[act + 1] - tok_end[arg] - 1
        length = val[arg]
        fits = length <= room.astype(np.uint64)
        after = tok_end[arg] + 1 + np.where(fits, length, 0).astype(np.int64)
        after_tok = np.searchsorted(tok_start, after)
        aligned = (after_tok >= n_tok) | (tok_start[np.minimum(after_tok, n_tok - 1)] == after)
        aligned |= after == bounds[act + 1]
        ok &= ~packed | (fits & aligned)
        nxt = np.where(packed, after_tok, nxt)
        frm = np.where(packed, pos + 2, frm)
        odd[act[~ok]] = True
        rec_sample.append(act[ok])
        rec_field.append(np.where(packed, field | np.uint64(1 << 32), field)[ok])
        rec_from.append(frm[ok])
        rec_to.append(nxt[ok])
        act, pos = act[ok], nxt[ok]
        going = pos < te[act]
        act, pos = act[going], pos[going]
    odd[act] = True

    r_sample = np.concatenate(rec_sample) if rec_sample else np.zeros(0, np.int64)
    r_field = np.concatenate(rec_field) if rec_field else np.zeros(0, np.uint64)
    r_from = np.concatenate(rec_from) if rec_from else np.zeros(0, np.int64)
    r_to = np.concatenate(rec_to) if rec_to else np.zeros(0, np.int64)
    is_packed = r_field >= np.uint64(1 << 32)
    r_field &= np.uint64(0xFFFFFFFF)

    # A Label must be varint fields only (key, str, num, num_unit): tag, value, tag, value...
    lab = (r_field == _LABEL) & is_packed
    lab_from, lab_to = r_from[lab], r_to[lab]
    odd[r_sample[lab][(lab_to - lab_from) % 2 == 1]] = True
    lab_tok = ranges(lab_from, lab_to)
    if len(lab_tok):
        lab_tags = val[lab_tok[(lab_tok - np.repeat(lab_from, lab_to - lab_from)) % 2 == 0]]
        lab_field = lab_tags >> np.uint64(3)
        bad_tag = ((lab_tags & np.uint64(7)) != 0) | (lab_field == 0) | (lab_field > _MAX_FIELD)
        if bad_tag.any():
            bad_tok = lab_tok[(lab_tok - np.repeat(lab_from, lab_to - lab_from)) % 2 == 0]
            odd[_sample_of(bounds, tok_start[bad_tok[bad_tag]])] = True

    keep = ~odd[r_sample]
    r_sample, r_field, r_from, r_to = r_sample[keep], r_field[keep], r_from[keep], r_to[keep]
    is_loc, is_val = r_field == _LOC, r_field == _VALUE
    loc_tok = _sorted_ranges(r_from[is_loc], r_to[is_loc])
    val_tok = _sorted_ranges(r_from[is_val], r_to[is_val])
    loc_count = np.zeros(m, dtype=np.int64)
    np.add.at(loc_count, r_sample[is_loc], r_to[is_loc] - r_from[is_loc])
    val_count = np.zeros(m, dtype=np.int64)
    np.add.at(val_count, r_sample[is_val], r_to[is_val] - r_from[is_val])

    has_labels = np.zeros(m, dtype=bool)
    has_labels[r_sample[(r_field == _LABEL) & is_packed[keep]]] = True
    odd_idx = np.flatnonzero(odd)
    odd_locs: dict[int, list[int]] = {}
    odd_vals: dict[int, list[int]] = {}
    if len(odd_idx):
        pb2: Any = importlib.import_module("pressured.pprof._pprof_pb2")
        from google.protobuf.message import DecodeError  # noqa: PLC0415 - heavy, lazy

        for i in odd_idx.tolist():
            try:
                sample = pb2.Sample.FromString(chunk[i])
            except DecodeError as exc:
                raise PprofError(
                    f"{source}: not a pprof profile (protobuf decode failed in "
                    f"sample[{first + i}]: {exc})"
                ) from exc
            odd_locs[i] = list(sample.location_id)
            odd_vals[i] = list(sample.value)
            has_labels[i] = len(sample.label) > 0
            loc_count[i] = len(odd_locs[i])
            val_count[i] = len(odd_vals[i])
    wrong = np.flatnonzero(val_count != n_types)
    if len(wrong):
        i = int(wrong[0])
        raise PprofError(
            f"{source}: sample[{first + i}] has {val_count[i]} values for {n_types} sample types"
        )

    values = np.zeros((m, n_types), dtype=np.int64)
    values[~odd] = val[val_tok].view(np.int64).reshape(-1, n_types)
    loc_ptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(loc_count, out=loc_ptr[1:])
    ids = np.zeros(int(loc_ptr[-1]), dtype=np.uint64)
    if len(odd_idx):
        regular = np.repeat(~odd, loc_count)
        ids[regular] = val[loc_tok]
        for i in odd_idx.tolist():
            values[i] = odd_vals[i]
            ids[loc_ptr[i] : loc_ptr[i + 1]] = np.array(odd_locs[i], dtype=np.uint64)
    else:
        ids[:] = val[loc_tok]
    return values, loc_count, ids, has_labels


def ranges(starts: Int64s, stops: Int64s) -> Int64s:
    """The integers of every [start, stop) range, concatenated."""
    sizes = stops - starts
    total = int(sizes.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes)
    out: Int64s = np.arange(total, dtype=np.int64) + offsets
    return out


def _sorted_ranges(starts: Int64s, stops: Int64s) -> Int64s:
    """The integers of disjoint [start, stop) ranges, in order (fields were found step by step,
    so the ranges of one sample come in wire order only once sorted)."""
    order = np.argsort(starts, kind="stable")
    return ranges(starts[order], stops[order])


def _sample_of(bounds: Int64s, byte_offsets: Int64s) -> Int64s:
    return np.searchsorted(bounds, byte_offsets, side="right") - 1
