"""Aged: a value per key, made again once old; old keys forgotten past the number kept."""

from __future__ import annotations

from collections import Counter

from perftop.collectors.aged import Aged


def test_a_value_is_made_once_while_young_and_again_when_old() -> None:
    made: Counter[str] = Counter()

    def make(key: str) -> str:
        made[key] += 1
        return f"{key}{made[key]}"

    young = Aged(make, max_age_s=3600.0)
    assert [young.get("a"), young.get("a"), young.get("b")] == ["a1", "a1", "b1"]
    old = Aged(make, max_age_s=0.0)
    assert [old.get("a"), old.get("a")] == ["a2", "a3"]
    assert young.get("a") == "a1"


def test_old_keys_are_forgotten_past_the_number_kept() -> None:
    aged = Aged(lambda key: key * 2, max_age_s=0.0, kept=4)
    for key in range(10):
        assert aged.get(key) == key * 2
    assert len(aged) <= 4
