"""The shape of `tasks_app`: imports run one way, with no cycle (imports inside functions and
under TYPE_CHECKING count), no module is longer than 450 lines, and `services/__init__.py`
re-exports nothing. Read from the source with `ast`; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "tasks_app"
MAX_LINES = 450

# From the bottom up. A module may import modules of its own layer or below, never above.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["conf", "exceptions", "cache", "logs"]),
    ("models", ["models"]),
    (
        "reads, representation and mechanics",
        [
            "registry",
            "webhooks",
            "forms",
            "serializers",
            "selectors",
            "timeline",
            "schedule_selectors",
            "recurrence",
            "throttling",
            "polling",
            "stack",
            "realtime.messages",
            "realtime.sse",
            "realtime.asgi_io",
            "realtime.publish",
            "health",
            "metrics",
        ],
    ),
    (
        "notifier, dispatch and their primitives",
        [
            "services.common",
            "services.dispatch",
            "services.webhooks",
            "services.notify",
            "services.transitions",
        ],
    ),
    (
        "services",
        [
            "services.submission",
            "services.execution",
            "services.control",
            "services.maintenance",
            "services.workers",
            "services.retention",
            "services.schedules",
        ],
    ),
    (
        "transports",
        [
            "api",
            "web",
            "worker",
            "realtime.consumers",
            "realtime.http",
            "realtime.auth",
            "realtime.routing",
            "admin",
            "tasks",
            "management",
            "job_types",
            "apps",
        ],
    ),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(APP).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def app_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in APP.rglob("*.py")
        if "migrations" not in path.parts and module_name(path) != ""
    }


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every tasks_app module `name` imports, wherever the import statement stands."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def add(target: str) -> None:
        # `from . import x` may name a module or a name in a package: keep the longest known prefix.
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            found.add(".".join(parts))

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
            elif node.module and node.module.startswith("tasks_app"):
                base = []
            else:
                continue
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            module = module.removeprefix("tasks_app").lstrip(".")
            for alias in node.names:
                add(f"{module}.{alias.name}" if module else alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tasks_app."):
                    add(alias.name.removeprefix("tasks_app."))
    found.discard(name)
    return found


def layer_of(name: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        if any(name == member or name.startswith(member + ".") for member in members):
            return index
    raise AssertionError(f"tasks_app.{name} is in no layer: add it to LAYERS in {__file__}")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = app_modules()
    known = set(modules)
    # Package __init__ files group their modules; an import of the package itself is an import of its __init__.
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def test_every_module_has_a_layer(graph):
    for name in graph:
        if name in ("services", "realtime"):
            continue  # package docstrings only
        layer_of(name)


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = [
        f"tasks_app.{source} ({LAYERS[layer_of(source)][0]}) imports tasks_app.{target} "
        f"({LAYERS[layer_of(target)][0]})"
        for source, targets in graph.items()
        if source not in ("services", "realtime")
        for target in targets
        if target not in ("services", "realtime") and layer_of(target) > layer_of(source)
    ]
    assert upward == []


def test_there_is_no_import_cycle(graph):
    visiting: list[str] = []
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycles.append([*visiting[visiting.index(name) :], name])
            return
        visiting.append(name)
        for target in sorted(graph.get(name, ())):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert cycles == []


def test_services_package_re_exports_nothing():
    tree = ast.parse((APP / "services" / "__init__.py").read_text())
    assert [type(node).__name__ for node in tree.body] == ["Expr"], "only the docstring"


def test_no_module_is_longer_than_the_limit():
    long = {
        str(path.relative_to(APP)): lines
        for path in APP.rglob("*.py")
        if "migrations" not in path.parts and (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_scan_sees_imports_inside_functions_and_type_checking_blocks(tmp_path):
    """The scan itself: a function-local import and a TYPE_CHECKING one are both edges."""
    source = tmp_path / "tasks_app" / "services" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..worker import context\n"
        "def f():\n    from .. import tasks\n    from tasks_app.api import views\n"
    )
    global APP
    saved, APP = APP, tmp_path / "tasks_app"
    try:
        found = imports_of("services.probe", source, {"worker.context", "tasks", "api.views", "api"})
    finally:
        APP = saved
    assert found == {"worker.context", "tasks", "api.views"}


def test_the_scan_finds_the_real_seams(graph):
    """A scan that found nothing would pass everything above: these edges must be seen."""
    assert {"services.transitions", "services.common", "models"} <= graph["services.execution"]
    assert {"services.notify", "services.common"} <= graph["services.transitions"]
    assert {"realtime.messages", "realtime.publish", "services.webhooks"} <= graph["services.notify"]
    assert {"worker.runner", "worker.webhook_sender", "services.maintenance"} <= graph["tasks"]
    assert "tasks" not in set().union(*(targets for name, targets in graph.items() if name != "tasks"))
