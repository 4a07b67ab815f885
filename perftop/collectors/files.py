"""Whole small files (/proc, /sys) read with no Python file object: the collectors' hot path reads
hundreds of them a tick, and a text-mode open costs about twice the reads."""

from __future__ import annotations

import os


def read_bytes(path: str) -> bytes:
    """The whole file at `path`; OSError as os.open and os.read raise it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 8192)
        if len(data) < 8192:
            return data
        chunks = [data]
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
