"""A value per key, made again once it is older than an age: what several collectors read between them
(the threads of a user, the figures of a cgroup) is read once a round, not once each."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Aged(Generic[K, V]):
    """`make(key)`, kept `max_age_s` (monotonic) and made again after that. Past `kept` keys, those whose
    value is old are forgotten (keys of processes and cgroups that went away)."""

    def __init__(self, make: Callable[[K], V], max_age_s: float, kept: int = 64) -> None:
        self._make = make
        self.max_age_s = max_age_s
        self._kept = kept
        self._values: dict[K, tuple[float, V]] = {}
        """key -> (until when the value serves; the value)."""

    def __len__(self) -> int:
        """The keys remembered."""
        return len(self._values)

    def get(self, key: K) -> V:
        now = time.monotonic()
        known = self._values.get(key)
        if known is not None and now < known[0]:
            return known[1]
        value = self._make(key)
        if len(self._values) >= self._kept:
            self._values = {k: v for k, v in self._values.items() if now < v[0]}
        self._values[key] = (now + self.max_age_s, value)
        return value
