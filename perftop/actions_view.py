"""Text renderings of action results (gc, memory, profile, threads, explain), for the CLI and the TUI.

The results are the JSON documents of CLI.md's `perftop action --json`; these functions only read them.
"""

from __future__ import annotations

import json
from typing import Any

from perftop.render.plan import NO_ADVICE, NO_ADVICE_BUT_WARNINGS, plan_lines, plan_text
from perftop.units import fmt_bytes, fmt_count, fmt_ms, safe_text, short_path


def _site(file: Any, line: Any) -> str:
    return f"{short_path(file)}:{line}"


def _signed_bytes(n: float) -> str:
    return ("+" if n >= 0 else "-") + fmt_bytes(abs(n))


def gc_text(r: dict[str, Any]) -> str:
    gens = r.get("collected_by_generation") or []
    before, after = r.get("rss_before_bytes"), r.get("rss_after_bytes")
    rss = "-"
    if isinstance(before, int) and isinstance(after, int):
        rss = f"{fmt_bytes(before)} -> {fmt_bytes(after)} ({_signed_bytes(after - before)})"
    lines = [
        f"collected {fmt_count(r.get('collected'))} objects in {fmt_ms(r.get('duration_ms'))}"
        f" (by generation: {', '.join(str(g) for g in gens)})",
        f"rss {rss}",
        f"generation counts {r.get('counts_before')} -> {r.get('counts_after')}",
        f"uncollectable (gc.garbage): {r.get('uncollectable', 0)}",
    ]
    if r.get("objects_before") is not None:
        lines.append(f"tracked objects {r.get('objects_before')} -> {r.get('objects_after')}")
    return "\n".join(lines)


def memory_text(r: dict[str, Any], limit: int = 15) -> str:
    if not r.get("tracing"):
        return "tracemalloc is off (its memory is freed)"
    head = (
        f"traced {fmt_bytes(r.get('traced_bytes'))} · peak {fmt_bytes(r.get('peak_bytes'))}"
        f" · tracemalloc's own overhead {fmt_bytes(r.get('overhead_bytes'))}"
    )
    if r.get("started"):
        head += "\ntracing started now: this is the baseline; the next snapshot shows what grew since"
    lines = [head, "", "growth since the previous snapshot (largest first):"]
    diff = r.get("diff") or []
    if not diff:
        lines.append("  (nothing yet)")
    for d in diff[:limit]:
        lines.append(
            f"  {_signed_bytes(d.get('size_diff_bytes', 0)):>12} {d.get('count_diff', 0):+9d} objs  "
            f"{_site(d.get('file'), d.get('line'))}"
        )
    lines += ["", "top allocation sites (by size):"]
    for t in (r.get("top") or [])[:limit]:
        lines.append(
            f"  {fmt_bytes(t.get('size_bytes')):>12} {t.get('count', 0):9d} objs  "
            f"{_site(t.get('file'), t.get('line'))}"
        )
    return "\n".join(lines)


def profile_text(r: dict[str, Any], limit: int = 20) -> str:
    samples = r.get("samples") or 0
    threads = r.get("threads") or []
    lines = [
        f"{samples} samples over {r.get('seconds')} s at {r.get('effective_hz', r.get('hz'))} Hz"
        f" across {len(threads)} threads ({r.get('idle_samples', 0)} idle)"
        + (" · cancelled early" if r.get("cancelled") else ""),
        "",
        f"{'self%':>6} {'total%':>6}  function (file:line)",
    ]
    total = max(samples, 1)
    for f in (r.get("top") or [])[:limit]:
        lines.append(
            f"{100 * f.get('self_samples', 0) / total:6.1f} {100 * f.get('total_samples', 0) / total:6.1f}  "
            f"{f.get('function')} ({_site(f.get('file'), f.get('line'))})"
        )
    lines += ["", "hottest lines:"]
    for ln in (r.get("lines") or [])[:10]:
        lines.append(f"{100 * ln.get('samples', 0) / total:6.1f}%  {_site(ln.get('file'), ln.get('line'))}")
    if threads:
        lines += ["", "threads: " + ", ".join(f"{t.get('name')} {t.get('samples')}" for t in threads)]
    sampler = r.get("sampler")
    if sampler:
        how = f"sampler: {sampler}"
        if r.get("main_thread_sampling"):
            how += f" (main thread: {r['main_thread_sampling']})"
        lines += ["", how]
    for note in [r.get("sampler_note"), r.get("main_thread_note"), *(r.get("notes") or [])]:
        if note:
            lines.append(f"note: {note}")
    return "\n".join(lines)


def profile_exact_text(r: dict[str, Any], limit: int = 25) -> str:
    lines = [str(r.get("overhead_note") or ""), "", f"{'calls':>9} {'total':>9} {'cumul.':>9}  function"]
    for f in (r.get("top") or [])[:limit]:
        lines.append(
            f"{f.get('calls', 0):9d} {fmt_ms(f.get('total_ms')):>9} {fmt_ms(f.get('cumulative_ms')):>9}  "
            f"{f.get('function')} ({_site(f.get('file'), f.get('line'))})"
        )
    missing = r.get("threads_not_covered")
    if missing:
        lines += ["", f"not covered: {', '.join(str(t) for t in missing)}"]
    return "\n".join(lines)


def threads_text(r: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for t in r:
        flags = [f for f, on in (("daemon", t.get("daemon")), ("perftop", t.get("perftop"))) if on]
        lines.append(
            f"thread {t.get('name')} (ident {t.get('ident')}{', ' if flags else ''}{', '.join(flags)})"
        )
        for frame in t.get("stack") or []:
            lines.append(f"    {frame.get('function')} ({_site(frame.get('file'), frame.get('line'))})")
        for task in t.get("tasks") or []:
            lines.append(f"  task {task.get('name')} [{task.get('state')}] {task.get('coro')}")
            for frame in task.get("stack") or []:
                lines.append(f"      {frame.get('function')} ({_site(frame.get('file'), frame.get('line'))})")
        lines.append("")
    return "\n".join(lines).rstrip()


def explain_text(r: dict[str, Any]) -> str:
    lines = [f"{r.get('dialect')}: {r.get('statement') or r.get('fingerprint')}"]
    advice = r.get("advice") or []
    if advice:
        lines.append(f"advice ({len(advice)}):")
    else:
        warned = any(line.warn for line in plan_lines(str(r.get("dialect")), r.get("plan")))
        lines.append("advice: " + (NO_ADVICE_BUT_WARNINGS if warned else NO_ADVICE))
    for a in advice:
        lines.append(f"  - {a.get('message')}")
        if a.get("sql"):
            lines.append(f"    {a['sql']}")
    lines += ["", "plan (>> costly node, ! warning):", plan_text(str(r.get("dialect")), r.get("plan"))]
    return "\n".join(lines)


RENDERERS: dict[str, Any] = {
    "gc": gc_text,
    "memory": memory_text,
    "profile": profile_text,
    "profile_exact": profile_exact_text,
    "threads": threads_text,
    "explain": explain_text,
}


def render(name: str, result: Any) -> str:
    """The text form of an action's result, with the control characters of app-chosen text (function and
    thread names, paths, SQL) escaped so that printing it cannot drive the terminal."""
    renderer = RENDERERS.get(name)
    return safe_text(json.dumps(result, indent=2) if renderer is None else str(renderer(result)))
