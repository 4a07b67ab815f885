"""The wire protocol: every message type round-trips, malformed input is refused with ProtocolError."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perftop.wire.protocol import (
    HEADER_BYTES,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ErrorFrame,
    FrameDecoder,
    Hello,
    Message,
    ProtocolError,
    Request,
    Response,
    decode_payload,
    encode,
    pack_counts,
    packed_param,
    parse_message,
    read_frame,
    send_frame,
    unpack_counts,
)

MESSAGES: list[Message] = [
    Hello(role="viewer", pid=42),
    Hello(
        role="agent",
        pid=1234,
        agent_version="0.1.0",
        python="3.11.7",
        argv=["app.py", "--port", "8000", "é"],
        started_at=1_700_000_000.25,
        name="shop",
        capabilities=["info", "stats"],
    ),
    Request(id=1, method="stats", params={"window": 10}),
    Request(id=2**40, method="info"),
    Response(id=1, ok=True, result={"timings": {}, "x": [1, 2.5, None, "s"]}),
    Response(id=3, ok=True),
    Response(id=2, ok=False, error="busy: profile running for 2.1 s"),
    ErrorFrame(message="refused: peer uid 1000 is neither this process's uid nor root"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_a_frame(message: Message) -> None:
    frame = encode(message.to_dict())
    (length,) = struct.unpack("!I", frame[:HEADER_BYTES])
    assert length == len(frame) - HEADER_BYTES
    [decoded] = FrameDecoder().feed(frame)
    assert parse_message(decoded) == message
    assert type(message).from_dict(decoded) == message


def test_frames_over_a_real_socket_pair() -> None:
    a, b = socket.socketpair()
    with a, b:
        for message in MESSAGES:
            send_frame(a, message.to_dict())
            assert parse_message(read_frame(b)) == message
        a.sendall(struct.pack("!I", 100) + b"{}")
        a.close()
        with pytest.raises(ConnectionError):
            read_frame(b)


def test_read_frame_refuses_an_oversized_length() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack("!I", 1000))
        with pytest.raises(ProtocolError, match="exceeds"):
            read_frame(b, max_frame=999)


@pytest.mark.parametrize(
    "data",
    [
        {"type": "hello", "role": "viewer", "pid": 1, "protocol": PROTOCOL_VERSION + 1},
        {"type": "hello", "role": "viewer", "pid": 1},
        {"type": "hello", "role": "viewer", "pid": 1, "protocol": "1"},
        {"type": "hello", "role": "viewer", "pid": 1, "protocol": True},
        {"type": "hello", "role": "king", "pid": 1, "protocol": 1},
        {"type": "hello", "role": "agent", "pid": "1", "protocol": 1},
        {"type": "hello", "role": "agent", "pid": 1, "protocol": 1, "argv": ["a", 1]},
        {"type": "hello", "role": "agent", "pid": 1, "protocol": 1, "argv": "a b"},
        {"type": "hello", "role": "agent", "pid": 1, "protocol": 1, "capabilities": "stats"},
        {"type": "hello", "role": "agent", "pid": 1, "protocol": 1, "started_at": "now"},
        {"type": "hello", "role": "agent", "pid": 1, "protocol": 1, "name": 5},
        {"type": "request", "id": "1", "method": "stats"},
        {"type": "request", "id": 1.5, "method": "stats"},
        {"type": "request", "id": 1},
        {"type": "request", "id": 1, "method": "stats", "params": [1]},
        {"type": "request", "id": 1, "method": "stats", "params": 0},
        {"type": "response", "id": 1, "ok": "yes"},
        {"type": "response", "id": 1, "ok": False},
        {"type": "response", "id": 1, "ok": False, "error": 3},
        {"type": "response", "ok": True},
        {"type": "error"},
        {"type": "error", "message": ["x"]},
        {"type": "bogus"},
        {"type": 5},
        {},
    ],
)
def test_malformed_messages_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_message(data)


def test_version_mismatch_says_so() -> None:
    with pytest.raises(ProtocolError, match="protocol version 99 is not supported"):
        Hello.from_dict({"type": "hello", "role": "viewer", "pid": 1, "protocol": 99})


def test_each_type_refuses_another_type() -> None:
    for message in MESSAGES:
        for other in (Hello, Request, Response, ErrorFrame):
            if not isinstance(message, other):
                with pytest.raises(ProtocolError):
                    other.from_dict(message.to_dict())


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"\xff\xfe", b"[1, 2]", b'"str"', b"NaN", b'{"a": Infinity}', b"[" * 100_000],
)
def test_bad_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(payload)
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack("!I", len(payload)) + payload)


def test_encode_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(ProtocolError):
        encode({"x": float("nan")})
    with pytest.raises(ProtocolError):
        encode({"x": object()})
    with pytest.raises(ProtocolError, match="exceeds"):
        encode({"x": "a" * (MAX_FRAME_BYTES + 1)})


def test_decoder_refuses_an_oversized_length_before_the_payload_arrives() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(struct.pack("!I", 100)[:3]) == []
    assert decoder.pending == 3
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(struct.pack("!I", 101)[3:])


def test_decoder_handles_many_small_frames_in_one_read() -> None:
    frames = b"".join(encode({"type": "request", "id": i, "method": "info"}) for i in range(20_000))
    decoder = FrameDecoder()
    messages = decoder.feed(frames)
    assert [m["id"] for m in messages] == list(range(20_000))
    assert decoder.pending == 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=12,
)


@settings(max_examples=100)
@given(st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=5), max_size=5), st.data())
def test_frames_split_anywhere_decode_the_same(objs: list[dict[str, Any]], data: st.DataObject) -> None:
    stream = b"".join(encode(o) for o in objs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    out: list[dict[str, Any]] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[start:cut]))
        start = cut
    assert out == [json.loads(json.dumps(o)) for o in objs]
    assert decoder.pending == 0


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_only_ever_raise_protocol_error(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_frame=1024)
    try:
        for chunk in chunks:
            for message in decoder.feed(chunk):
                assert isinstance(message, dict)
                with contextlib.suppress(ProtocolError):
                    parse_message(message)
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=200))
def test_random_payloads_behind_valid_headers(payload: bytes) -> None:
    try:
        messages = FrameDecoder().feed(struct.pack("!I", len(payload)) + payload)
    except ProtocolError:
        return
    assert len(messages) == 1 and isinstance(messages[0], dict)


FIELDS = ["role", "pid", "protocol", "argv", "id", "method", "params", "ok", "error", "message"]


@settings(max_examples=150)
@given(
    st.sampled_from(["hello", "request", "response", "error"]),
    st.dictionaries(
        st.sampled_from(
            ["role", "pid", "protocol", "argv", "id", "method", "params", "ok", "error", "message"]
        ),
        json_values,
    ),
)
def test_random_fields_parse_or_raise_protocol_error(kind: str, fields: dict[str, Any]) -> None:
    try:
        message = parse_message({**fields, "type": kind})
    except ProtocolError:
        return
    assert parse_message(message.to_dict()) == message


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=300))
def test_packed_counts_round_trip_in_the_narrowest_width(counts: list[int]) -> None:
    width, text = pack_counts(counts)
    assert unpack_counts(width, text) == counts
    top = max(counts, default=0)
    assert top < 1 << (8 * width)
    assert width == 1 or top >= 1 << (4 * width)  # the next narrower width could not hold it
    assert len(base64.b64decode(text)) == width * len(counts)


def test_packed_counts_are_little_endian() -> None:
    assert pack_counts([1, 258]) == (2, base64.b64encode(b"\x01\x00\x02\x01").decode())


@pytest.mark.parametrize(
    ("width", "text"),
    [(3, "AAAA"), (True, "AA=="), ("1", "AA=="), (2, "AAAA"), (1, "not base64!"), (1, b"AA=="), (None, "")],
)
def test_malformed_packed_counts_are_refused(width: Any, text: Any) -> None:
    with pytest.raises(ProtocolError):
        unpack_counts(width, text)


def test_packed_param_is_a_boolean() -> None:
    assert packed_param(None) is False and packed_param(False) is False and packed_param(True) is True
    for value in (1, "true", [], {}):
        with pytest.raises(ProtocolError, match="'packed' must be true or false"):
            packed_param(value)
