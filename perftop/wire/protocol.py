"""The wire protocol between the agent (in the monitored app) and the viewer. Standard library only.

A frame is a 4-byte big-endian length followed by that many bytes of one UTF-8 JSON object. Nothing is
ever unpickled or evaluated. The first frame each way is a `hello` carrying the protocol version; then the
viewer sends `request`s with an `id`, and the agent answers each with a `response` echoing the id. An
`error` frame says why a connection is about to be closed.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import socket
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Largest frame either side accepts; a bigger length prefix closes the connection with an error."""
_HEADER = struct.Struct("!I")
HEADER_BYTES = _HEADER.size


class ProtocolError(ValueError):
    """A frame or message is malformed, too large, or of the wrong protocol version."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame: length prefix and compact JSON of `message`; ProtocolError if it is not JSON-able."""
    try:
        payload = json.dumps(message, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"message cannot be sent as JSON: {exc}") from None
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME_BYTES} byte limit")
    return _HEADER.pack(len(payload)) + payload


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"frame holds {name}, which is not JSON")


def decode_payload(payload: bytes) -> dict[str, Any]:
    """The JSON object in one frame's payload (strict JSON: NaN and Infinity are refused)."""
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("frame nests JSON too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame must hold a JSON object")
    return obj


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole messages out. For non-blocking sockets."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Messages completed by `data`. Raises ProtocolError on an oversized or malformed frame."""
        buf = self._buf
        buf += data
        out: list[dict[str, Any]] = []
        pos = 0
        try:
            while len(buf) - pos >= HEADER_BYTES:
                (length,) = _HEADER.unpack_from(buf, pos)
                if length > self._max:
                    raise ProtocolError(f"frame of {length} bytes exceeds the {self._max} byte limit")
                end = pos + HEADER_BYTES + length
                if len(buf) < end:
                    break
                payload = bytes(buf[pos + HEADER_BYTES : end])
                pos = end
                out.append(decode_payload(payload))
        finally:
            # One deletion per feed, not one per frame: many small frames in one read stay linear.
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buf)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(min(n - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        chunks += chunk
    return bytes(chunks)


def read_frame(sock: socket.socket, max_frame: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    """Read one whole frame from a blocking socket."""
    (length,) = _HEADER.unpack(_recv_exact(sock, HEADER_BYTES))
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds the {max_frame} byte limit")
    return decode_payload(_recv_exact(sock, length))


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    """Write one whole frame to a blocking socket."""
    sock.sendall(encode(message))


def window_seconds(value: Any) -> float | None:
    """A request's `window`: None (since start) or a finite number of seconds; ProtocolError otherwise
    (1e400 decodes to infinity, and a 400-digit integer overflows float: neither is a window)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError("'window' must be a number of seconds or null")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ProtocolError("'window' must be a finite number of seconds")
    return seconds


BINS_PAIRS = "pairs"
BINS_DENSE = "dense"


def bins_form(value: Any) -> str:
    """A `stats` request's optional `bins`: how the timings' sketches give their bins. Absent or null
    (what every viewer asked before it existed): "pairs", `Sketch.to_dict`'s `"bins": [[index, count],
    ...]`. "dense" (asked by `perftop export`, which reads every bin of every timing): no `bins`, but
    `"lo"`, the first populated bin's index, and `"counts"`, the count of each bin from `lo` to the last
    populated one (empty bins in between as 0), a quarter of the bytes and a third of the decoding.
    Only the timings' sketches change; an agent older than the parameter ignores it and answers pairs,
    so whoever asks for dense bins must read pairs too. ProtocolError for anything else."""
    if value is None or value == BINS_PAIRS:
        return BINS_PAIRS
    if value == BINS_DENSE:
        return BINS_DENSE
    raise ProtocolError(f"'bins' must be {BINS_PAIRS!r} or {BINS_DENSE!r}")


def packed_param(value: Any) -> bool:
    """A `stats` request's optional `packed` (with dense bins): true asks for each timing's dense `counts`
    as `pack_counts` writes them, a base64 string and a `width`, not a JSON list: JSON's reading of a
    host's million small integers is most of a collection's decoding, base64 and `array` about a tenth
    of it. An agent older than the parameter ignores it and answers a list (or pairs), so whoever asks
    must read those too. ProtocolError unless absent, null or a boolean."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ProtocolError("'packed' must be true or false")
    return value


_WIDTHS = {array(code).itemsize: code for code in "QLIHB"}
"""Bytes per count -> the unsigned `array` type code of that size (1, 2, 4 and 8 on every platform)."""


def pack_counts(counts: Sequence[int]) -> tuple[int, str]:
    """(width, text): `counts` (integers in 0 .. 2**64 - 1) as little-endian unsigned integers of the
    fewest bytes that hold the largest, base64-encoded. OverflowError for a count out of that range."""
    top = max(counts, default=0)
    width = next((w for w in sorted(_WIDTHS) if top < 1 << (8 * w)), 8)
    packed = array(_WIDTHS[width], counts)
    if sys.byteorder == "big":
        packed.byteswap()
    return width, base64.b64encode(packed.tobytes()).decode("ascii")


def unpack_counts(width: Any, text: Any) -> list[int]:
    """The counts `pack_counts` wrote as (`width`, `text`); ProtocolError if they are not such."""
    code = _WIDTHS.get(width) if type(width) is int else None
    if code is None or not isinstance(text, str):
        raise ProtocolError("packed counts need a width of 1, 2, 4 or 8 and a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("packed counts are not base64") from None
    if len(raw) % width:
        raise ProtocolError(
            f"packed counts of {len(raw)} bytes are not a whole number of {width}-byte counts"
        )
    counts = array(code)
    counts.frombytes(raw)
    if sys.byteorder == "big":
        counts.byteswap()
    return counts.tolist()


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    if key not in data or data[key] is None:
        if optional:
            return None
        raise ProtocolError(f"{data.get('type', 'message')} lacks {key!r}")
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise ProtocolError(f"{key!r} must be {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


@dataclass(frozen=True)
class Hello:
    """First frame each way. The agent's hello describes the process it runs in."""

    role: str
    """`agent` or `viewer`."""
    pid: int
    protocol: int = PROTOCOL_VERSION
    agent_version: str | None = None
    python: str | None = None
    argv: list[str] | None = None
    started_at: float | None = None
    name: str | None = None
    capabilities: list[str] = field(default_factory=list)
    """Request methods this side serves (the agent's), so a viewer can tell what it may ask."""

    type = "hello"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "role": self.role,
            "pid": self.pid,
            "protocol": self.protocol,
            "agent_version": self.agent_version,
            "python": self.python,
            "argv": self.argv,
            "started_at": self.started_at,
            "name": self.name,
            "capabilities": list(self.capabilities),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hello:
        if data.get("type") != "hello":
            raise ProtocolError("expected a hello frame")
        protocol = _require(data, "protocol", int)
        if protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {protocol} is not supported (this side speaks {PROTOCOL_VERSION})"
            )
        role = _require(data, "role", str)
        if role not in ("agent", "viewer"):
            raise ProtocolError(f"unknown role {role!r}")
        argv = _require(data, "argv", list, optional=True)
        if argv is not None and not all(isinstance(a, str) for a in argv):
            raise ProtocolError("'argv' must be a list of strings")
        caps = data.get("capabilities") or []
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ProtocolError("'capabilities' must be a list of strings")
        started = _require(data, "started_at", (int, float), optional=True)
        return cls(
            role=role,
            pid=_require(data, "pid", int),
            protocol=protocol,
            agent_version=_require(data, "agent_version", str, optional=True),
            python=_require(data, "python", str, optional=True),
            argv=argv,
            started_at=None if started is None else float(started),
            name=_require(data, "name", str, optional=True),
            capabilities=caps,
        )


@dataclass(frozen=True)
class Request:
    """A viewer's request: call `method` with `params`; the response echoes `id`."""

    id: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    type = "request"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "request", "id": self.id, "method": self.method, "params": self.params}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Request:
        if data.get("type") != "request":
            raise ProtocolError("expected a request frame")
        params = data.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ProtocolError("'params' must be an object")
        return cls(id=_require(data, "id", int), method=_require(data, "method", str), params=params)


@dataclass(frozen=True)
class Response:
    """The agent's answer to one request: `ok` with a `result`, or not ok with an `error` message."""

    id: int
    ok: bool
    result: Any = None
    error: str | None = None

    type = "response"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "response", "id": self.id, "ok": self.ok, "result": self.result, "error": self.error}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Response:
        if data.get("type") != "response":
            raise ProtocolError("expected a response frame")
        ok = _require(data, "ok", bool)
        error = _require(data, "error", str, optional=True)
        if not ok and error is None:
            raise ProtocolError("a failed response must say why in 'error'")
        return cls(id=_require(data, "id", int), ok=ok, result=data.get("result"), error=error)


@dataclass(frozen=True)
class ErrorFrame:
    """Sent just before closing a connection, saying why."""

    message: str

    type = "error"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "error", "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorFrame:
        if data.get("type") != "error":
            raise ProtocolError("expected an error frame")
        return cls(message=_require(data, "message", str))


Message = Hello | Request | Response | ErrorFrame
_TYPES: dict[str, Any] = {"hello": Hello, "request": Request, "response": Response, "error": ErrorFrame}


def parse_message(data: dict[str, Any]) -> Message:
    """The typed message in a decoded frame; ProtocolError for an unknown type or malformed fields."""
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in _TYPES:
        raise ProtocolError(f"unknown message type {kind!r}")
    result: Message = _TYPES[kind].from_dict(data)
    return result
