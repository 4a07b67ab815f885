"""How one interval is stored: its document as compact JSON, zlib-compressed, and the reductions that make
consecutive intervals cheap.

Rows come in groups: a keyframe, compressed on its own, and rows that store only what changed since their
keyframe where that is cheap to express (slow queries newer than the keyframe's; sketch bin counts minus the
keyframe's), compressed with the keyframe's JSON as preset dictionary. A row is decoded from itself and its
keyframe only. Timing sketches are packed as dense runs of counts (latency bins are contiguous).
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from perftop.recording.errors import RecordingError
from perftop.wire.sketch import Sketch, SketchError

MB = 1_000_000
MAX_DOCUMENT_BYTES = 32 * MB
"""Largest interval document written or read (an agent's stats frame is at most 16 MiB)."""


def to_json_bytes(doc: dict[str, Any]) -> bytes:
    """The document as compact UTF-8 JSON, the form that is compressed and stored."""
    return json.dumps(doc, separators=(",", ":")).encode()


def compress(raw: bytes, key: bytes | None) -> bytes:
    """zlib, with the keyframe's JSON as preset dictionary when there is one."""
    if key is None:
        return zlib.compress(raw, 9)
    co = zlib.compressobj(9, zdict=key)
    return co.compress(raw) + co.flush()


def decompress(blob: bytes, key: bytes | None) -> bytes:
    """The bytes `compress` made; RecordingError if they are damaged or would inflate past
    MAX_DOCUMENT_BYTES (a zlib bomb in a crafted file must not take the reader's memory)."""
    try:
        do = zlib.decompressobj() if key is None else zlib.decompressobj(zdict=key)
        raw = do.decompress(blob, MAX_DOCUMENT_BYTES + 1)
        if len(raw) <= MAX_DOCUMENT_BYTES and not do.unconsumed_tail:
            raw += do.flush()
    except zlib.error as exc:
        raise RecordingError(f"a recorded interval is damaged: {exc}") from None
    if len(raw) > MAX_DOCUMENT_BYTES or do.unconsumed_tail:
        raise RecordingError(
            f"a recorded interval inflates past {MAX_DOCUMENT_BYTES // MB} MB (not one perftop wrote)"
        )
    if not do.eof:
        raise RecordingError("a recorded interval is damaged: it is truncated")
    return raw


def parse_document(raw: bytes) -> dict[str, Any]:
    """The JSON object `raw` holds; RecordingError if it is not JSON or not an object."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RecordingError(f"a recorded interval is damaged: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise RecordingError("a recorded interval is damaged: not a JSON object")
    return doc


def pack_sketch(sketch: Sketch) -> dict[str, Any]:
    """`Sketch.to_dict`, with the bins as a dense run of counts from the lowest index where that is
    smaller (latency bins are contiguous): about half the size once compressed."""
    data = sketch.to_dict()
    bins = data["bins"]
    if bins and bins[-1][0] - bins[0][0] < 4 * len(bins):
        low = bins[0][0]
        counts = [0] * (bins[-1][0] - low + 1)
        for i, n in bins:
            counts[i - low] = n
        del data["bins"]
        data["low"] = low
        data["counts"] = counts
    return data


def unpack_sketch(data: Any) -> Sketch:
    """The Sketch `pack_sketch` packed; SketchError if malformed."""
    if isinstance(data, dict) and "counts" in data:
        low, counts = data.get("low"), data.get("counts")
        if not isinstance(low, int) or not isinstance(counts, list):
            raise SketchError("packed sketch without a valid low index and counts")
        rest = {k: v for k, v in data.items() if k not in ("low", "counts")}
        rest["bins"] = [[low + k, n] for k, n in enumerate(counts) if n]
        data = rest
    return Sketch.from_dict(data)


def dictionary_of(key: dict[str, Any]) -> bytes:
    """The preset dictionary of a keyframe's group: its JSON without the slow queries (which the other
    rows do not repeat), so that it fits zlib's 32 kB window. Computed from the keyframe as parsed back
    from its JSON, identically by the writer and the reader."""
    return to_json_bytes({**key, "slow_queries": []})


def _key_counts(packed: Any) -> dict[int, int] | None:
    """A packed sketch's nonzero counts by bin index; None if it is not packed as a dense run."""
    if (
        isinstance(packed, dict)
        and isinstance(packed.get("low"), int)
        and isinstance(packed.get("counts"), list)
    ):
        low = packed["low"]
        return {low + k: n for k, n in enumerate(packed["counts"]) if n}
    return None


def delta_document(doc: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    """`doc` as stored in a keyframe's group: slow queries newer than the keyframe's only, and packed
    sketch counts minus the keyframe's where its bins lie within theirs. `restore_document` reverses it."""
    out = dict(doc)
    extra = dict(doc["recording"])
    out["recording"] = extra
    slow = doc.get("slow_queries") or []
    key_slow = key.get("slow_queries") or []
    if slow and key_slow:
        newest = max(float(q.get("at") or 0.0) for q in key_slow)
        out["slow_queries"] = [q for q in slow if float(q.get("at") or 0.0) > newest]
        extra["slow_total"] = len(slow)
    agent, key_agent = extra.get("agent"), (key.get("recording") or {}).get("agent")
    if isinstance(agent, dict) and isinstance(key_agent, dict):
        key_sketches = key_agent.get("sketches") or {}
        sketches = {}
        for name, packed in (agent.get("sketches") or {}).items():
            base = _key_counts(key_sketches.get(name))
            mine = _key_counts(packed)
            low = packed.get("low") if isinstance(packed, dict) else None
            if base and mine is not None and isinstance(low, int) and min(base) >= low:
                high = low + len(packed["counts"])
                if max(base) < high:
                    packed = {
                        **packed,
                        "counts": [n - base.get(low + k, 0) for k, n in enumerate(packed["counts"])],
                    }
                    packed["delta"] = True
            sketches[name] = packed
        extra["agent"] = {**agent, "sketches": sketches}
    return out


def restore_document(doc: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    """The document `delta_document` reduced, rebuilt from what it kept and its keyframe."""
    extra = doc.get("recording")
    if not isinstance(extra, dict):
        return doc
    total = extra.pop("slow_total", None)
    if isinstance(total, int):
        merged = list(doc.get("slow_queries") or []) + list(key.get("slow_queries") or [])
        merged.sort(key=lambda q: float(q.get("at") or 0.0), reverse=True)
        doc["slow_queries"] = merged[:total]
    agent, key_agent = extra.get("agent"), (key.get("recording") or {}).get("agent")
    if isinstance(agent, dict):
        key_sketches = (key_agent if isinstance(key_agent, dict) else {}).get("sketches") or {}
        for name, packed in (agent.get("sketches") or {}).items():
            if isinstance(packed, dict) and packed.pop("delta", False):
                base = _key_counts(key_sketches.get(name))
                low = packed.get("low")
                if base is None or not isinstance(low, int):
                    raise RecordingError(f"a recorded interval is damaged: no keyframe counts for {name!r}")
                packed["counts"] = [n + base.get(low + k, 0) for k, n in enumerate(packed["counts"])]
    return doc
