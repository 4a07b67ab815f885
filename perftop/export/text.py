"""Faster writers of the Prometheus text format (0.0.4) and of OpenMetrics text, producing byte for byte
what prometheus_client's own writers produce (tests/integration/test_export_text.py compares them on a
real collection), for the plain families perftop makes.

prometheus_client formats every sample from scratch: sorted labels, each name checked and each value
escaped, the sample name escaped character by character in OpenMetrics; about 10 µs a line, and a
timing's classic histogram is 64 lines at the default resolution. Here each `name="value"` pair is
escaped once per rendering and each distinct value formatted once, which makes a line about five
times cheaper. A family with anything else (exemplars, timestamps, native histograms, `_created` or
gauge-histogram samples, names outside `[a-zA-Z_][a-zA-Z0-9_]*`) is handed to prometheus_client whole.
A family with a `text_lines(out)` method writes its own lines (the exporter's timings, see
prometheus/timings.py), and in OpenMetrics 2.0 one with `openmetrics2_lines(out)` (its native histograms).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

_PLAIN = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_TEXT_TYPES = {"counter": "counter", "info": "gauge", "stateset": "gauge", "unknown": "untyped"}
"""Family types as the 0.0.4 format names them (others keep their name; gauge histograms go whole to
prometheus_client)."""
_TEXT_SUFFIXES = {"counter": "_total", "info": "_info"}
_OM_ONLY = ("_created", "_gsum", "_gcount")


class _Frozen:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class _Writer:
    """One rendering: caches of escaped label pairs and formatted values, and the checks of names."""

    def __init__(self, openmetrics: bool) -> None:
        from prometheus_client.utils import floatToGoString

        self.openmetrics = openmetrics
        self.pairs: dict[tuple[str, str], str] = {}
        self.values: dict[float, str] = {}
        self.format_value: Callable[[float], str] = floatToGoString
        self.names_ok: set[str] = set()

    def plain(self, fam: Metric) -> bool:
        """Whether the fast path writes `fam` exactly as prometheus_client would."""
        if fam.type == "gaugehistogram" or not _PLAIN.match(fam.name):
            return False
        om_only = tuple(fam.name + suffix for suffix in _OM_ONLY)
        ok = self.names_ok
        for s in fam.samples:
            if s.exemplar is not None or s.timestamp is not None or s.native_histogram is not None:
                return False
            if s.value is None:
                return False
            name = s.name
            if name not in ok:
                if not _PLAIN.match(name) or name in om_only:
                    return False
                ok.add(name)
            for label in s.labels:
                if label not in ok:
                    if not _PLAIN.match(label) or label.startswith("__"):
                        return False
                    ok.add(label)
        return True

    def lines(self, fam: Metric, out: list[str]) -> None:
        """The samples of a plain family, one line each."""
        pairs, values = self.pairs, self.values
        for s in fam.samples:
            parts = []
            for item in sorted(s.labels.items()):
                text = pairs.get(item)
                if text is None:
                    k, v = item
                    v = v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
                    text = pairs[item] = f'{k}="{v}"'
                parts.append(text)
            value = s.value
            shown = values.get(value) if value else None  # 0.0 and -0.0 are equal keys, shown apart
            if shown is None:
                shown = self.format_value(value)
                if value:
                    values[value] = shown
            if parts:
                out.append(f"{s.name}{{{','.join(parts)}}} {shown}\n")
            else:
                out.append(f"{s.name} {shown}\n")


def _help(doc: str, openmetrics: bool) -> str:
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    return doc.replace('"', r"\"") if openmetrics else doc


def write_text(registry: Collector) -> bytes:
    """The Prometheus text format 0.0.4, as prometheus_client's `generate_latest` writes it."""
    from prometheus_client.exposition import generate_latest

    writer = _Writer(openmetrics=False)
    out: list[str] = []
    for fam in registry.collect():
        direct = getattr(fam, "text_lines", None)
        if direct is None and not writer.plain(fam):
            out.append(generate_latest(_Frozen([fam])).decode("utf-8"))
            continue
        name = fam.name + _TEXT_SUFFIXES.get(fam.type, "")
        out.append(f"# HELP {name} {_help(fam.documentation, False)}\n")
        out.append(f"# TYPE {name} {_TEXT_TYPES.get(fam.type, fam.type)}\n")
        if direct is not None:
            direct(out)
        else:
            writer.lines(fam, out)
    return "".join(out).encode("utf-8")


def write_openmetrics(registry: Collector, version: str = "1.0.0") -> bytes:
    """OpenMetrics text, as prometheus_client's `openmetrics.exposition.generate_latest` writes it."""
    from prometheus_client.openmetrics.exposition import UNDERSCORES
    from prometheus_client.openmetrics.exposition import generate_latest as write_family

    generate_latest: Callable[..., bytes] = write_family
    writer = _Writer(openmetrics=True)
    out: list[str] = []
    major = version.split(".")[0]
    native = major.isdigit() and int(major) >= 2
    for fam in registry.collect():
        direct = getattr(fam, "text_lines", None)
        if direct is None and native:
            direct = getattr(fam, "openmetrics2_lines", None)
        if direct is None and not writer.plain(fam):
            body = generate_latest(_Frozen([fam]), escaping=UNDERSCORES, version=version).decode("utf-8")
            out.append(body.removesuffix("# EOF\n"))
            continue
        out.append(f"# HELP {fam.name} {_help(fam.documentation, True)}\n")
        out.append(f"# TYPE {fam.name} {fam.type}\n")
        if fam.unit:
            out.append(f"# UNIT {fam.name} {fam.unit}\n")
        if direct is not None:
            direct(out)
        else:
            writer.lines(fam, out)
    out.append("# EOF\n")
    return "".join(out).encode("utf-8")


def faster(encoder: Callable[[Collector], bytes]) -> Callable[[Collector], bytes] | None:
    """The fast equivalent of an encoder prometheus_client's `choose_encoder` picked, or None where
    there is none (another escaping than the default's)."""
    from prometheus_client import exposition
    from prometheus_client.openmetrics import exposition as openmetrics

    if encoder is exposition.generate_latest:
        return write_text
    if not isinstance(encoder, partial) or encoder.args:
        return None
    options: dict[str, Any] = dict(encoder.keywords)
    if options.pop("escaping", openmetrics.UNDERSCORES) != openmetrics.UNDERSCORES:
        return None
    if encoder.func is exposition.generate_latest and not options:
        return write_text
    if encoder.func is openmetrics.generate_latest and set(options) <= {"version"}:
        return partial(write_openmetrics, version=options.get("version", "1.0.0"))
    return None
