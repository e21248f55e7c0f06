"""The proxy's place in the module graph (http/proxy.py rule 9, balance/base.py).

Read from the source with ``ast``, ``if TYPE_CHECKING:`` imports included: a cycle that only
the type checker sees is still a cycle for whoever reads or splits the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import prefork_lb

ROOT = Path(prefork_lb.__file__).parent


def source(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")[1:]).with_suffix(".py")


def imports_of(module: str) -> set[str]:
    """The prefork_lb modules ``module`` imports, at any level of its source."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source(module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prefork_lb"):
            for alias in node.names:  # ``from pkg import module`` names the module itself
                sub = f"{node.module}.{alias.name}"
                found.add(sub if source(sub).exists() else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("prefork_lb."))
    return {m for m in found if source(m).exists()}


def reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for m in imports_of(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_the_proxy_never_imports_the_connection() -> None:
    """The proxy sees the client only through ``http.client.Client`` and returns its outcome
    (rule 9), so nothing the proxy imports, directly or not, imports ``http.connection``.
    Catches the old connection <-> proxy cycle (proxy.py imported ClientConnection under
    TYPE_CHECKING to write its keep_alive and status_zone)."""
    assert "prefork_lb.http.connection" not in reachable("prefork_lb.http.proxy")


def test_the_proxy_knows_no_balancing_method() -> None:
    """The proxy drives every method through ``balance.base.Balancer`` (pick, release) and
    the shared accounting of ``balance.peers``; no method module is imported by it. Catches
    method-specific release work in the proxy (it imported ``balance.least_time``)."""
    for module in ("http.proxy", "http.relay", "http.request_body", "http.client"):
        balance = {m for m in imports_of(f"prefork_lb.{module}") if m.startswith("prefork_lb.balance.")}
        # balance.members: runtime server lists (issue 19), no method either
        allowed = {"prefork_lb.balance.base", "prefork_lb.balance.peers", "prefork_lb.balance.members"}
        assert balance <= allowed, module
