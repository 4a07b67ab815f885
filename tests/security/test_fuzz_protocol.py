"""Fuzzing the frame decoder (`perftop/wire/protocol.py`) with adversarial frames: whatever bytes arrive, the
decoder returns messages or raises ProtocolError with a one-line message; it never raises anything else,
never takes long, and never holds more than one frame's worth of bytes."""

from __future__ import annotations

import json
import math
import struct
import time
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perftop.wire.protocol import (
    HEADER_BYTES,
    FrameDecoder,
    ProtocolError,
    decode_payload,
    parse_message,
    window_seconds,
)

FUZZ = settings(max_examples=300, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])

NASTY_JSON = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"1e400",
    b'{"window": 1e400}',
    b'{"window": -1e400}',
    b'{"id": ' + b"9" * 5000 + b"}",
    b'{"id": ' + b"9" * 400 + b"}",
    b"NaN",
    b'{"x": Infinity}',
    b'"\\ud800"',
    b'{"type": "hello", "protocol": 1, "role": "agent", "pid": 1, "argv": [1]}',
    b'{"type": "request", "id": 1, "method": "stats", "params": []}',
    b'{"type": "response", "id": 1, "ok": false}',
    b"\xff\xfe\x00",
    b"",
    b" " * 1000,
]
"""Payloads known to trip JSON parsers and their callers: nesting, overflowing numbers, NaN, lone
surrogates, wrong field types, invalid UTF-8."""

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
message_fields = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "request", "response", "error", "other"])},
    optional={
        k: json_values
        for k in (
            "id",
            "method",
            "params",
            "ok",
            "result",
            "error",
            "role",
            "pid",
            "protocol",
            "argv",
            "message",
        )
    },
)


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def feed_all(decoder: FrameDecoder, chunks: list[bytes], max_frame: int) -> list[dict[str, Any]]:
    """Feed every chunk; stop at the first ProtocolError (after which a connection is closed). What the
    decoder keeps is never more than one frame under the limit and its header."""
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        try:
            out += decoder.feed(chunk)
        except ProtocolError as exc:
            assert "\n" not in str(exc), str(exc)
            break
        assert decoder.pending < HEADER_BYTES + max_frame, decoder.pending
    return out


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_arbitrary_bytes_only_raise_protocol_error(chunks: list[bytes]) -> None:
    feed_all(FrameDecoder(max_frame=4096), chunks, 4096)


@FUZZ
@given(
    st.lists(st.integers(0, len(NASTY_JSON) - 1) | st.binary(max_size=200), min_size=1, max_size=4), st.data()
)
def test_nasty_payloads_in_valid_frames_only_raise_protocol_error(
    payloads: list[int | bytes], data: st.DataObject
) -> None:
    """Payloads drawn from NASTY_JSON (by index, to keep failure reports short) or at random."""
    stream = b"".join(frame(NASTY_JSON[p] if isinstance(p, int) else p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    started = time.monotonic()
    for message in feed_all(FrameDecoder(max_frame=1 << 20), chunks, 1 << 20):
        assert isinstance(message, dict)
        try:
            parse_message(message)
        except ProtocolError as exc:
            assert "\n" not in str(exc)
    assert time.monotonic() - started < 5


@FUZZ
@given(message_fields)
def test_decoded_messages_parse_or_raise_protocol_error(fields: dict[str, Any]) -> None:
    payload = json.dumps(fields).encode()
    try:
        parse_message(decode_payload(payload))
    except ProtocolError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(st.integers(HEADER_BYTES, 1 << 31), st.lists(st.binary(min_size=1, max_size=2048), max_size=8))
def test_a_claimed_length_never_makes_the_decoder_hold_more_than_one_frame(
    length: int, chunks: list[bytes]
) -> None:
    """A header claiming up to 2 GiB: the decoder refuses it at once past its limit, and otherwise
    holds no more than what arrived (it never allocates the claimed size)."""
    decoder = FrameDecoder(max_frame=4096)
    try:
        decoder.feed(struct.pack("!I", length))
    except ProtocolError:
        assert length > 4096
        return
    received = HEADER_BYTES
    for chunk in chunks:
        try:
            decoder.feed(chunk)
        except ProtocolError:
            return
        received += len(chunk)
        assert decoder.pending <= min(received, HEADER_BYTES + 4096 + len(chunk))


@FUZZ
@given(json_values | st.sampled_from([1e400, -1e400, 10**400, -(10**400), math.nan, True]))
def test_a_window_is_a_finite_number_or_a_protocol_error(value: Any) -> None:
    try:
        window = window_seconds(value)
    except ProtocolError as exc:
        assert "\n" not in str(exc)
        return
    assert window is None or (isinstance(window, float) and math.isfinite(window))
