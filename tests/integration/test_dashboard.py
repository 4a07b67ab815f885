"""`dashboards/perftop.json`, the Grafana dashboard: every metric name its PromQL uses (panels and template
variables) must be exported by `perftop export` scraping real processes: the demo service (timings, GC,
asyncio loop lag, SQL fingerprints) and a real Flask + SQLAlchemy app on gunicorn under `perftop run` (the
per-route request and SQL families, a listening socket's backlog). The expressions are parsed by a real
PromQL parser (promql-parser), so functions, label names and keywords are never taken for metric names;
with a Prometheus server on the machine, each expression is also evaluated against it scraping the
exporter: it must be valid and return data."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port, short_tmp_dir, wait_for
from tests.targets.exp_procs import http_get

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboards" / "perftop.json"
BIN = Path(sys.executable).parent
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "1m"}
"""Grafana's built-in variables, as Grafana would put them in before sending a query."""


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every query in the dashboard: each panel target, each template variable's
    `label_values(SELECTOR, label)` selector."""
    model = json.loads(DASHBOARD.read_text())
    out = []
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in model["templating"]["list"]:
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query, re.S)
        assert match, f"variable {var['name']}: {query}"
        out.append((f"variable {var['name']}", match.group(1)))
    return out


def grafana_expand(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: the names of its vector selectors (in range vectors,
    subqueries and function arguments too), by PromQL's own grammar."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(grafana_expand(expr)), visit)
    return names


def test_metric_names_come_from_the_grammar_not_from_words() -> None:
    """The extraction on its own: functions, aggregations, label names, keywords and strings are not names."""
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{app=~"$app",metric="b_total"}'
        '[$__rate_interval]))) / on (route) group_left label_replace(max_over_time(c[5m:1m]), "route", '
        '"$1", "metric", "http (.+)") > bool 0 unless d offset 5m or topk(3, e) < +Inf'
    )
    assert metric_names(expr) == {"a_bucket", "c", "d", "e"}


@dataclass
class Fleet:
    """What the dashboard is checked against: the exporter's URL and the processes behind it."""

    exporter: str
    demo_pid: int
    web_port: int


def _start(cmd: list[str], env: dict[str, str], log: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def scrape_names(url: str) -> set[str]:
    status, _, body = http_get(f"{url}/metrics", fresh=True)
    assert status == 200
    return {s.name for fam in text_string_to_metric_families(body) for s in fam.samples}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    pytest.importorskip("gunicorn")
    pytest.importorskip("flask")
    with short_tmp_dir() as sockets, tempfile.TemporaryDirectory(prefix="ptdash") as tmp:
        log = open(os.path.join(tmp, "processes.log"), "w+")  # noqa: SIM115 - closed below
        base = {
            k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERFTOP", "PERFTOP_FRAMEWORKS")
        }
        env = {
            **base,
            "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '/usr/bin:/bin')}",
            "PERFTOP_SOCKET_DIR": sockets,
            "PERFTOP_TEST_DB": os.path.join(tmp, "app.db"),
        }
        # The app's SQLite file is made before gunicorn's worker starts, as the framework tests do.
        subprocess.run(
            [sys.executable, "-c", "import tests.targets.web.flask_sql_app"],
            cwd=REPO,
            env={**env, "PERFTOP": "0"},
            check=True,
        )
        web_port = free_port()
        procs: list[subprocess.Popen[str]] = []
        try:
            demo = _start([sys.executable, "-m", "perftop", "demo", "--no-tui"], env, log)
            procs.append(demo)
            gunicorn = [str(BIN / "gunicorn"), "-w", "1", "-k", "gthread", "--threads", "2"]
            procs.append(
                _start(
                    [
                        sys.executable,
                        "-m",
                        "perftop",
                        "run",
                        "--name",
                        "shop-web",
                        "--",
                        *gunicorn,
                        "-b",
                        f"127.0.0.1:{web_port}",
                        "tests.targets.web.flask_sql_app:app",
                    ],
                    env,
                    log,
                )
            )
            export_port = free_port()
            exporter = _start(
                [sys.executable, "-m", "perftop", "export", "--listen", f"127.0.0.1:{export_port}"], env, log
            )
            procs.append(exporter)

            def web_up() -> bool:
                try:
                    return http_get(f"http://127.0.0.1:{web_port}/fast", timeout=5)[0] == 200
                except OSError:
                    return False

            wait_for(web_up, timeout=60, interval=0.2)
            for path in ["/users/3/posts"] * 10 + ["/fast"] * 10 + ["/page"] * 3 + ["/nope"] * 3:
                http_get(f"http://127.0.0.1:{web_port}{path}")
            url = f"http://127.0.0.1:{export_port}"

            def populated() -> bool:
                """The demo has timed its endpoints, its loop lag and a GC pause; the app its routes."""
                try:
                    names = scrape_names(url)
                    _, _, body = http_get(f"{url}/metrics")
                except OSError:
                    return False
                return "perftop_request_queries_bucket" in names and all(
                    f'metric="{m}"' in body for m in ("asyncio.loop_lag", "gc.gen0", "api.checkout")
                )

            wait_for(populated, timeout=90, interval=0.5)
            yield Fleet(url, demo.pid, web_port)
        finally:
            for proc in procs:
                _stop(proc)
            log.close()


def test_every_metric_name_in_the_dashboard_is_exported(fleet: Fleet) -> None:
    exported = scrape_names(fleet.exporter)
    used: dict[str, set[str]] = {}
    for where, expr in expressions():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    assert len(used) >= 20, sorted(used)
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    if not any(name.startswith("perftop_process_cgroup_") for name in exported):
        # Only on a machine without a readable cgroup for the processes: then perftop exports none.
        snapshot = subprocess.run(
            [sys.executable, "-m", "perftop", "snapshot", "--pid", str(fleet.demo_pid), "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(snapshot.stdout)["process"]["cgroup"] is None
        missing = {n: w for n, w in missing.items() if not n.startswith("perftop_process_cgroup_")}
    assert not missing, missing


def test_dashboard_model_is_importable() -> None:
    """The shape Grafana's import needs: the datasource as an input, unique panel ids, every query on it."""
    model = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in model["__inputs"]] == ["DS_PROMETHEUS"]
    assert model["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    for panel in model["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
    for var in model["templating"]["list"]:
        assert var["datasource"]["uid"] == "${DS_PROMETHEUS}"
    titles = " | ".join(p["title"] for p in model["panels"]).lower()
    for topic in (
        "p99",
        "rate",
        "error",
        "sql time share",
        "queries per request",
        "slowest",
        "gc",
        "loop lag",
    ):
        assert topic in titles, topic
    for topic in ("cpu", "memory", "backlog"):
        assert topic in titles, topic


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus server on this machine (.ci/run installs it)")
def test_every_query_runs_on_a_real_prometheus_and_returns_data(fleet: Fleet, tmp_path: Path) -> None:
    """Prometheus scrapes the exporter every 2 s; each dashboard query (Grafana's variables put in,
    every template variable as All) must be accepted and, but for the few the machine may leave empty
    (cgroup limits when there are none, throttling, OOM kills), return at least one series."""
    assert PROMETHEUS is not None
    port = free_port()
    target = fleet.exporter.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 2s}\n"
        f"scrape_configs: [{{job_name: perftop, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    with open(tmp_path / "prometheus.log", "w+") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            api = f"http://127.0.0.1:{port}/api/v1"

            def query(expr: str) -> dict[str, Any]:
                url = f"{api}/query?{urllib.parse.urlencode({'query': expr})}"
                try:
                    with urllib.request.urlopen(url, timeout=30) as resp:
                        body: dict[str, Any] = json.loads(resp.read())
                except urllib.error.HTTPError as exc:
                    body = json.loads(exc.read())
                return body

            def scraped_enough() -> bool:
                try:
                    found = query('sum_over_time(up{job="perftop"}[1m])')
                except OSError:
                    return False
                results = found.get("data", {}).get("result", [])
                return bool(results) and float(results[0]["value"][1]) >= 8

            wait_for(scraped_enough, timeout=90, interval=0.5)

            def requests_seen() -> float:
                results = query("sum(perftop_request_queries_count)")["data"]["result"]
                return float(results[0]["value"][1]) if results else 0.0

            before = requests_seen()
            for path in ["/users/3/posts", "/fast", "/page"] * 5:  # requests inside the rate windows
                http_get(f"http://127.0.0.1:{fleet.web_port}{path}")
            wait_for(lambda: requests_seen() >= before + 15, timeout=60, interval=0.5)
            may_be_empty = re.compile(r"cgroup_(cpu_limit|memory_limit|cpu_throttled|oom)")
            empty = []
            for where, expr in expressions():
                concrete = (
                    grafana_expand(expr)
                    .replace("$app", ".*")
                    .replace("$metric", ".*")
                    .replace("$route", ".*")
                )
                found = query(concrete)
                assert found["status"] == "success", (where, concrete, found.get("error"))
                if not found["data"]["result"] and not may_be_empty.search(expr):
                    empty.append(where)
            assert not empty, empty
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
