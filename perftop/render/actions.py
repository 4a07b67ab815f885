"""Text renderings of action results (gc, memory, profile, threads, explain), for the CLI and the TUI.

The results are the JSON documents of `perftop action --json` (the CLI contract, ../shared/CLI.md); these
functions only read them.
"""

from __future__ import annotations

import json
from typing import Any

from perftop.render.plan import NO_ADVICE, NO_ADVICE_BUT_WARNINGS, plan_lines, plan_text
from perftop.render.units import fmt_bytes, fmt_count, fmt_ms, safe_text, short_path


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


# -- results of several workers (an action run from a pre-fork master) -----------------------------------

COLUMN = 11
"""Width of one worker's column in the side-by-side tables."""


def per_worker(name: str, result: Any) -> dict[int, Any]:
    """Each worker's own result of an action fanned out to several workers, by PID (`per_pid`; a thread
    dump's threads by their `pid`); empty for the result of one process."""
    if isinstance(result, dict):
        per = result.get("per_pid")
        if isinstance(per, dict) and len(per) > 1:
            return {int(pid): r for pid, r in sorted(per.items(), key=lambda kv: int(kv[0]))}
        return {}
    if name == "threads" and isinstance(result, list):
        by_pid: dict[int, list[Any]] = {}
        for t in result:
            if isinstance(t, dict) and isinstance(t.get("pid"), int):
                prefix = f"[{t['pid']}] "
                own = str(t.get("name"))
                by_pid.setdefault(t["pid"], []).append(
                    {**t, "name": own[len(prefix) :] if own.startswith(prefix) else own}
                )
        return dict(sorted(by_pid.items())) if len(by_pid) > 1 else {}
    return {}


def _blocks(pids: list[int], label: int, width: int) -> list[list[int]]:
    """The PIDs in groups whose columns fit beside a `label`-wide first column in `width` characters."""
    fit = max(1, (width - label) // COLUMN)
    return [pids[i : i + fit] for i in range(0, len(pids), fit)]


def _table(rows: list[tuple[str, list[str]]], heads: list[str], label: int) -> list[str]:
    lines = [" " * label + "".join(f"{h:>{COLUMN}}" for h in heads)]
    lines += [f"{title:<{label}}" + "".join(f"{v:>{COLUMN}}" for v in values) for title, values in rows]
    return lines


def gc_side_by_side(per: dict[int, dict[str, Any]], width: int = 80) -> str:
    """A forced GC in every worker: one column per worker (and one for all of them), one row per figure."""

    def rss_change(r: dict[str, Any]) -> str:
        before, after = r.get("rss_before_bytes"), r.get("rss_after_bytes")
        if isinstance(before, int) and isinstance(after, int):
            return _signed_bytes(after - before)
        return "-"

    def gen(r: dict[str, Any], k: int) -> int:
        gens = r.get("collected_by_generation") or []
        return int(gens[k]) if k < len(gens) else 0

    def total(key: str) -> int:
        return sum(int(r.get(key) or 0) for r in per.values())

    every = {
        "collected": total("collected"),
        "collected_by_generation": [sum(gen(r, k) for r in per.values()) for k in range(3)],
        "duration_ms": max(float(r.get("duration_ms") or 0.0) for r in per.values()),
        "rss_before_bytes": total("rss_before_bytes"),
        "rss_after_bytes": total("rss_after_bytes"),
        "uncollectable": total("uncollectable"),
    }
    label = 16
    lines = [f"forced GC in {len(per)} workers (all: summed; pause: the longest)"]
    for block in _blocks(list(per), label, width - COLUMN):
        cols = [every, *(per[pid] for pid in block)]
        rows = [
            ("collected", [fmt_count(c.get("collected")) for c in cols]),
            *((f"  generation {k}", [fmt_count(gen(c, k)) for c in cols]) for k in range(3)),
            ("pause", [fmt_ms(c.get("duration_ms")) for c in cols]),
            ("rss before", [fmt_bytes(c.get("rss_before_bytes")) for c in cols]),
            ("rss after", [fmt_bytes(c.get("rss_after_bytes")) for c in cols]),
            ("rss change", [rss_change(c) for c in cols]),
            ("uncollectable", [str(c.get("uncollectable", 0)) for c in cols]),
        ]
        lines += [*_table(rows, ["all", *(str(p) for p in block)], label), ""]
    return "\n".join(lines).rstrip()


def memory_growth_by_worker(per: dict[int, dict[str, Any]]) -> dict[tuple[str, Any], dict[int, int]]:
    """{(file, line): {pid: bytes grown since that worker's previous snapshot}} of every worker's diff."""
    out: dict[tuple[str, Any], dict[int, int]] = {}
    for pid, r in per.items():
        for d in r.get("diff") or [] if isinstance(r, dict) else []:
            site = out.setdefault((str(d.get("file")), d.get("line")), {})
            site[pid] = site.get(pid, 0) + int(d.get("size_diff_bytes") or 0)
    return out


def memory_side_by_side(per: dict[int, dict[str, Any]], width: int = 80, limit: int = 15) -> str:
    """tracemalloc in every worker: each one's traced sizes, then the `limit` sites that grew most in all
    of them, with one column per worker (as many as fit)."""
    label = 16
    lines = []
    for block in _blocks(list(per), label, width):
        cols = [per[pid] for pid in block]
        rows = [
            ("traced", [fmt_bytes(c.get("traced_bytes")) for c in cols]),
            ("peak", [fmt_bytes(c.get("peak_bytes")) for c in cols]),
            ("overhead", [fmt_bytes(c.get("overhead_bytes")) for c in cols]),
        ]
        lines += [*_table(rows, [str(p) for p in block], label), ""]
    started = [str(pid) for pid, r in per.items() if r.get("tracing") and r.get("started")]
    if started:
        lines.append(f"tracing started now in {', '.join(started)}: the next snapshot shows what grew since")
    off = [str(pid) for pid, r in per.items() if not r.get("tracing")]
    if off:
        lines.append(f"tracemalloc is off (its memory freed) in {', '.join(off)}")
    if limit <= 0 or len(off) == len(per):
        return "\n".join(lines).rstrip()
    shown = list(per)[: max(1, (width - 40) // COLUMN)]
    lines += [
        "growth since each worker's previous snapshot, by site (largest in all first):",
        "".join(f"{p:>{COLUMN}}" for p in shown) + "  allocated at",
    ]
    growth = sorted(memory_growth_by_worker(per).items(), key=lambda kv: -abs(sum(kv[1].values())))
    if not growth:
        lines.append("  (nothing yet)")
    for (file, line), by_pid in growth[:limit]:
        values = "".join(f"{_signed_bytes(by_pid[p]) if p in by_pid else '-':>{COLUMN}}" for p in shown)
        lines.append(f"{values}  {_site(file, line)}")
    return "\n".join(lines).rstrip()


def profile_with_workers(
    r: dict[str, Any], per: dict[int, dict[str, Any]], width: int = 80, limit: int = 20
) -> str:
    """The merged profile, with each worker's samples: in all, and beside each top function its self
    samples in each worker (as many workers as fit; `s` saves every one's)."""
    samples = ", ".join(
        f"{pid} {p.get('samples', 0)} ({p.get('idle_samples', 0)} idle)" for pid, p in per.items()
    )
    shown = list(per)[: max(1, (width - 40) // 7)]
    lines = [
        profile_text(r, limit=0).split("\n\n")[0],
        f"samples by worker: {samples}",
        "",
        f"{'self%':>6} {'total%':>6} "
        + "".join(f"{pid:>7}" for pid in shown)
        + "  function (file:line)"
        + ("" if len(shown) == len(per) else f"  [{len(per) - len(shown)} more workers: s saves them]"),
    ]
    by_worker: dict[int, dict[tuple[Any, Any, Any], int]] = {
        pid: {
            (f.get("function"), f.get("file"), f.get("line")): int(f.get("self_samples") or 0)
            for f in p.get("top") or []
        }
        for pid, p in per.items()
    }
    total = max(int(r.get("samples") or 0), 1)
    for f in (r.get("top") or [])[:limit]:
        key = (f.get("function"), f.get("file"), f.get("line"))
        counts = "".join(f"{by_worker[pid].get(key, 0):>7}" for pid in shown)
        lines.append(
            f"{100 * f.get('self_samples', 0) / total:6.1f} {100 * f.get('total_samples', 0) / total:6.1f} "
            f"{counts}  {f.get('function')} ({_site(f.get('file'), f.get('line'))})"
        )
    rest = profile_text(r).split("\n\nhottest lines:", 1)
    if len(rest) == 2:
        lines += ["", "hottest lines:" + rest[1]]
    return "\n".join(lines)


def threads_by_worker(per: dict[int, list[dict[str, Any]]]) -> str:
    """A thread dump of every worker, one section per worker."""
    sections = []
    for pid, threads in per.items():
        plural = "" if len(threads) == 1 else "s"
        sections.append(f"── worker {pid}: {len(threads)} thread{plural} ──\n{threads_text(threads)}")
    return "\n\n".join(sections)


def render_workers(name: str, result: Any, width: int = 80) -> str:
    """The text of an action's result; from several workers, their results side by side (gc, memory),
    each worker's sample counts beside the merged profile, each worker's thread dump. Control characters
    of app-chosen text escaped, as `render` does."""
    per = per_worker(name, result)
    if not per:
        return render(name, result)
    errors = result.get("errors") if isinstance(result, dict) else None
    lines = [f"failed in PID {pid}: {why}" for pid, why in sorted((errors or {}).items())]
    if name == "gc":  # the columns name the workers
        lines.append(gc_side_by_side(per, width))
    elif name == "memory":
        lines.append(memory_side_by_side(per, width))
    else:
        lines.insert(0, f"from {len(per)} workers: {', '.join(str(p) for p in per)}")
        if name == "profile":
            lines += ["", profile_with_workers(result, per, width)]
        elif name == "threads":
            lines += ["", threads_by_worker(per)]
        else:
            lines += ["", "\n\n".join(f"── worker {pid} ──\n{render(name, r)}" for pid, r in per.items())]
    return safe_text("\n".join(lines))
