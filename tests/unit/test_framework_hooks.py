"""The framework hooks' tables and route templates (the real frameworks run in test_frameworks.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from perftop.agent.frameworks import HOOKS, django_template

BOOTSTRAP = Path(__file__).resolve().parents[2] / "perftop" / "launch" / "_bootstrap" / "sitecustomize.py"


def test_the_bootstrap_watches_exactly_the_modules_the_agent_can_instrument() -> None:
    tree = ast.parse(BOOTSTRAP.read_text())
    watched = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.AnnAssign | ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "_FRAMEWORK_MODULES" for t in _targets(node))
    )
    assert set(ast.literal_eval(watched)) == set(HOOKS)


def _targets(node: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return list(node.targets) if isinstance(node, ast.Assign) else [node.target]


@pytest.mark.parametrize(
    ("route", "template"),
    [
        ("user/<str:username>/", "/user/{username}/"),
        ("api/orders/<int:order_id>/", "/api/orders/{order_id}/"),
        ("<slug>/", "/{slug}/"),
        (r"^articles/(?P<year>[0-9]{4})/$", "/articles/{year}/"),
        (r"^a/(?P<x>(ab|cd)+)/(?P<y>\d+)$", "/a/{x}/{y}"),
        ("", "/"),
    ],
)
def test_django_routes_become_templates_without_converters_or_regexes(route: str, template: str) -> None:
    assert django_template(route) == template
