"""The layout's rules, checked on the source (docs/architecture.md, "The layout").

The core is pure: a module under ``bridge/core`` imports nothing of the bridge
outside ``bridge/core`` (the settings schema included, the config loader not)
and no library that opens sockets, starts threads, reads files or the clock.
Only the application reads config files: ``bridge.config_loader`` is imported
by the modules that start and reload the daemon, never by the core, the
adapters or the paths.  And the folders read top-down (the diagram in
docs/architecture.md): each imports only from the layers above it, and the
three data paths not from each other.  Imports are read from each file's
syntax tree, those inside functions included, so a lazy import cannot slip
past.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

BRIDGE = Path(__file__).resolve().parents[2] / "bridge"

#: Libraries whose use would make the core do I/O, start threads or read the
#: clock (the caller passes the current time in).
IMPURE = frozenset(
    {
        "asyncio",
        "concurrent",
        "confluent_kafka",
        "h11",
        "logging",
        "multiprocessing",
        "os",
        "paho",
        "pathlib",
        "select",
        "selectors",
        "shutil",
        "socket",
        "ssl",
        "structlog",
        "subprocess",
        "threading",
        "time",
        "trio",
        "trio_websocket",
        "urllib",
    }
)

#: The modules that read config files: they start, check and reload the daemon.
LOADER_USERS = frozenset({"bridge.cli", "bridge.runtime", "bridge.daemon", "bridge.config_watch"})


#: The layers, top-down: a module may import its own group and lower ranks.
#: The data paths share a rank, so none imports another.
RANKS = {
    "core": 0,
    "io": 1,
    "auth": 2,
    "ingest": 3,
    "stream": 3,
    "commands": 3,
    "ops": 4,
    "console": 5,
    "application": 6,
}


def group(module: str) -> str:
    """``bridge.stream.hub`` -> ``stream``; the top-level modules but auth
    (runtime, config_loader, daemon, cli, ...) are the application."""
    part = module.split(".")[1] if "." in module else ""
    return part if part in RANKS else "application"


def module_name(path: Path) -> str:
    parts = path.relative_to(BRIDGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, is_package: bool = False) -> Iterator[str]:
    """Every module ``source`` imports, relative imports made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "__future__":
                continue
            yield base
            # `from bridge import config_loader` names a module, not an attribute.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def modules() -> Iterator[tuple[str, set[str]]]:
    for path in sorted(BRIDGE.rglob("*.py")):
        name = module_name(path)
        yield name, set(imported(path.read_text(), name, path.name == "__init__.py"))


def core_problems(name: str, imports: set[str]) -> list[str]:
    problems = []
    for target in sorted(imports):
        top = target.split(".")[0]
        if top == "bridge" and target != "bridge" and not target.startswith("bridge.core"):
            problems.append(f"{name} imports {target}, outside bridge.core")
        elif top in IMPURE:
            problems.append(f"{name} imports {target}: the core does no I/O")
    return problems


def loader_problems(name: str, imports: set[str]) -> list[str]:
    if name in LOADER_USERS or name == "bridge.config_loader":
        return []
    return [f"{name} imports {t}" for t in sorted(imports) if t == "bridge.config_loader"]


def layer_problems(name: str, imports: set[str]) -> list[str]:
    own = group(name)
    problems = []
    for target in sorted(t for t in imports if t.startswith("bridge.")):
        other = group(target)
        if other != own and RANKS[other] >= RANKS[own]:
            problems.append(f"{name} ({own}) imports {target} ({other})")
    return problems


def test_the_core_imports_only_the_core_and_no_io() -> None:
    core = [(name, imports) for name, imports in modules() if name.startswith("bridge.core")]
    assert len(core) > 20  # the walk found the package
    problems = [p for name, imports in core for p in core_problems(name, imports)]
    assert problems == []


def test_only_the_application_imports_the_config_loader() -> None:
    problems = [p for name, imports in modules() for p in loader_problems(name, imports)]
    assert problems == []


def test_each_layer_imports_only_the_layers_above_it() -> None:
    problems = [p for name, imports in modules() for p in layer_problems(name, imports)]
    assert problems == []


def test_the_checks_see_lazy_relative_and_module_imports() -> None:
    source = (
        "from . import settings\n"
        "from ..ingest import pipeline\n"
        "def later():\n"
        "    import time\n"
        "    from bridge import config_loader\n"
    )
    imports = set(imported(source, "bridge.core.plan"))
    assert core_problems("bridge.core.plan", imports) == [
        "bridge.core.plan imports bridge.config_loader, outside bridge.core",
        "bridge.core.plan imports bridge.ingest, outside bridge.core",
        "bridge.core.plan imports bridge.ingest.pipeline, outside bridge.core",
        "bridge.core.plan imports time: the core does no I/O",
    ]
    assert "bridge.core.settings" in imports
    assert loader_problems("bridge.io.mqtt", imports) == [
        "bridge.io.mqtt imports bridge.config_loader"
    ]
    assert loader_problems("bridge.runtime", imports) == []
    assert layer_problems("bridge.core.plan", imports) == [
        "bridge.core.plan (core) imports bridge.config_loader (application)",
        "bridge.core.plan (core) imports bridge.ingest (ingest)",
        "bridge.core.plan (core) imports bridge.ingest.pipeline (ingest)",
    ]
    assert layer_problems("bridge.stream.hub", {"bridge.ingest.stats", "bridge.auth"}) == [
        "bridge.stream.hub (stream) imports bridge.ingest.stats (ingest)"
    ]
