"""Write docs/configuration.md from the typed config (bridge/core/settings.py).

    .venv/bin/python scripts/gen_config_docs.py           # rewrite the file
    .venv/bin/python scripts/gen_config_docs.py --check   # exit 1 if it is stale

Why generated: the Structs are what the daemon actually accepts (unknown keys
are refused), so a hand-written reference drifts the first time someone adds a
field.  This walks the Structs with ``msgspec.inspect`` from ``Config`` down
and writes, for every table, its docstring, each key with its type and default,
and an example TOML snippet.  Every snippet is decoded back into its Struct
before anything is written, with the commented-out optional keys switched on,
so an example cannot show a value the daemon would refuse.
tests/unit/test_config_docs.py fails when the committed file differs.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bridge` importable
    sys.path.insert(0, str(REPO))

from bridge.config_loader import ENV_OVERRIDES, apply_overrides  # noqa: E402
from bridge.core import settings as cfg  # noqa: E402

OUTPUT = REPO / "docs" / "configuration.md"
COMMAND = ".venv/bin/python scripts/gen_config_docs.py"

#: Structs written inline (``tenant = { segment = "tenant" }``) rather than as
#: tables of their own; they still get a section describing their keys.
INLINE: frozenset[type] = frozenset({cfg.Source})

#: Names shown for the keys of a table of tables, one per nesting level.
PLACEHOLDERS: dict[tuple[type, str], tuple[str, ...]] = {
    (cfg.Config, "metrics"): ("<metric>",),
    (cfg.Config, "devices"): ("<tenant>", "<device>"),
    (cfg.PayloadRules, "fields"): ("<metric>",),
    (cfg.CommandMapping, "values"): ("<placeholder>",),
}

#: Example values for keys that have no default to show (required, or unset
#: by default).  Keys missing here get a placeholder of their type.
EXAMPLES: dict[tuple[type, str], Any] = {
    (cfg.Source, "segment"): "tenant",
    (cfg.Source, "field"): "data.tenant_id",
    (cfg.Source, "const"): "acme",
    (cfg.TimeRule, "field"): "ts",
    (cfg.FieldRule, "field"): "data.temp",
    (cfg.FieldRule, "enum"): ["idle", "running", "fault"],
    (cfg.FieldRule, "unit"): "°C",
    (cfg.SingleRule, "name"): cfg.Source(segment="metric"),
    (cfg.SingleRule, "unit"): cfg.Source(field="unit"),
    (cfg.SingleRule, "quality"): cfg.Source(field="q"),
    (cfg.PayloadRules, "event_id"): cfg.Source(field="msg_id"),
    (cfg.PayloadRules, "quality"): cfg.Source(field="quality"),
    (cfg.PayloadRules, "metrics_object"): "metrics",
    (cfg.MqttSide, "shared_group"): "bridges",
    (cfg.AlarmRule, "kind"): "above",
    (cfg.AlarmRule, "threshold"): 80.0,
    (cfg.AlarmRule, "low"): 10.0,
    (cfg.AlarmRule, "high"): 30.0,
    (cfg.MetricSpec, "unit"): "°C",
    (cfg.MetricSpec, "min"): -50.0,
    (cfg.MetricSpec, "max"): 150.0,
    (cfg.DeviceSpec, "metrics"): ["temperature", "humidity"],
    (cfg.TlsSettings, "ca_file"): "/etc/edge-bridge/tls/ca.pem",
    (cfg.TlsSettings, "cert_file"): "/etc/edge-bridge/tls/client.pem",
    (cfg.TlsSettings, "key_file"): "/etc/edge-bridge/tls/client.key",
    (cfg.MqttSettings, "username"): "edge-bridge",
    (cfg.MqttSettings, "password"): "change-me",
    (cfg.StreamSettings, "group_id"): "edge-bridge-stream",
    (cfg.AuthSettings, "jwt_secret"): "at-least-32-bytes-of-random-secret",
    (cfg.AuthSettings, "public_key_file"): "/etc/edge-bridge/jwt-public.pem",
    (cfg.AuthSettings, "audience"): "dashboards",
    (cfg.AuthSettings, "issuer"): "https://auth.example.com/",
    (cfg.CommandMapping, "payload_field"): "payload",
    (cfg.CommandValue, "header"): "device_id",
    (cfg.CommandValue, "field"): "target.device",
    (cfg.DeviceSpec, "groups"): ["building-a", "pumps"],
    (cfg.StreamSource, "mapping"): "telemetry",
    (cfg.StreamSource, "device"): cfg.Source(field="data.DEVICE_ID"),
    (cfg.StreamSource, "ts"): cfg.TimeRule(field="ts"),
    (cfg.StreamSource, "metrics_object"): "metrics",
    (cfg.StreamSource, "group_id"): "dashboards",
    (cfg.StreamEnvelope, "template"): {"type": "telemetry", "device_id": "{device}"},
    (cfg.StreamKeepalive, "sse_interval_s"): 15.0,
    (cfg.StreamIdentity, "tenant"): "plant-1",
    (cfg.StreamEndpoint, "name"): "dashboard",
    (cfg.StreamEndpoint, "auth"): "jwt",
    (cfg.StreamEndpoint, "websocket_path"): "/api/v1/stream",
    (cfg.StreamEndpoint, "sse_path"): "/api/v1/stream/sse",
    (cfg.StreamEndpoint, "status_path"): "/api/v1/stream/status",
    (cfg.StreamEndpoint, "status"): {"total_connections": "{total_connections}"},
    (cfg.StreamEndpoint, "welcome"): {"type": "connected", "tenant_id": "{tenant}"},
}

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


# --------------------------------------------------------------------------- types
def _strip_none(t: mi.Type) -> mi.Type:
    """``X | None`` -> ``X``: optionality shows in the default column."""
    if isinstance(t, mi.UnionType):
        rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(rest) == 1:
            return rest[0]
    return t


def _nested_struct(t: mi.Type) -> tuple[mi.StructType, list[str]] | None:
    """The Struct a field holds as a table of its own, with the container
    levels in between ("array" for a list, "dict" for a table of tables)."""
    levels: list[str] = []
    t = _strip_none(t)
    while True:
        if isinstance(t, mi.StructType):
            return None if t.cls in INLINE and not levels else (t, levels)
        if isinstance(t, mi.ListType):
            levels.append("array")
            t = t.item_type
        elif isinstance(t, mi.DictType):
            levels.append("dict")
            t = t.value_type
        else:
            return None


def _range(t: mi.IntType | mi.FloatType) -> str:
    """The range a number is checked against (``msgspec.Meta``), as shown in
    the table: ``, 1 to 65,535`` or ``, > 0 and ≤ 86,400``."""

    def show(value: float) -> str:
        return f"{value:,}"

    if t.ge is not None and t.le is not None:
        return f", {show(t.ge)} to {show(t.le)}"
    bounds = [(t.ge, "≥"), (t.gt, ">"), (t.le, "≤"), (t.lt, "<")]
    shown = [f"{sign} {show(value)}" for value, sign in bounds if value is not None]
    return f", {' and '.join(shown)}" if shown else ""


def type_name(t: mi.Type, anchors: dict[type, str]) -> str:
    """A TOML-flavoured type description for the reference table."""
    t = _strip_none(t)
    if isinstance(t, mi.StrType):
        return "string"
    if isinstance(t, mi.BoolType):
        return "boolean"
    if isinstance(t, mi.IntType):
        return "integer" + _range(t)
    if isinstance(t, mi.FloatType):
        return "number" + _range(t)
    if isinstance(t, mi.LiteralType):
        return " \\| ".join(f"`{json.dumps(v)}`" for v in t.values)
    if isinstance(t, mi.ListType):
        return f"array of {type_name(t.item_type, anchors)}"
    if isinstance(t, mi.DictType):
        return f"table of {type_name(t.value_type, anchors)}"
    if isinstance(t, mi.StructType):
        anchor = anchors[t.cls]
        return f"[{'inline table' if t.cls in INLINE else 'table'}](#{anchor})"
    if isinstance(t, mi.UnionType):
        return " or ".join(type_name(x, anchors) for x in t.types)
    if isinstance(t, mi.AnyType):
        return "any value"
    raise TypeError(f"no TOML description for {t!r}: extend type_name()")


def _placeholder(t: mi.Type) -> Any:
    """A value of the right type for a key with no default and no example."""
    t = _strip_none(t)
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    simple: list[tuple[type, Any]] = [
        (mi.StrType, "..."),
        (mi.BoolType, False),
        (mi.IntType, 0),
        (mi.FloatType, 0.0),
        (mi.ListType, []),
        (mi.DictType, {}),
    ]
    for kind, value in simple:
        if isinstance(t, kind):
            return value
    raise TypeError(f"no placeholder for {t!r}: add the key to EXAMPLES")


# --------------------------------------------------------------------------- values
def toml_value(value: Any) -> str:
    """A Python value as a TOML literal (inline tables for dicts and Structs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, msgspec.Struct):
        return toml_value(_non_default(value))
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"no TOML literal for {value!r}")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _default_of(f: mi.Field) -> Any:
    if f.default is not msgspec.NODEFAULT:
        return f.default
    if f.default_factory is not msgspec.NODEFAULT:
        return f.default_factory()
    return msgspec.NODEFAULT


def _non_default(value: msgspec.Struct) -> dict[str, Any]:
    """The fields of a Struct value that differ from their defaults."""
    info = mi.type_info(type(value))
    assert isinstance(info, mi.StructType)
    return {
        f.encode_name: getattr(value, f.name)
        for f in info.fields
        if getattr(value, f.name) != _default_of(f)
    }


# --------------------------------------------------------------------------- walk
@dataclass
class Section:
    """One Struct and every place it appears in a config file."""

    info: mi.StructType
    headers: list[str] = field(default_factory=list)

    @property
    def cls(self) -> type:
        return self.info.cls


def _header(path: list[str], array: bool) -> str:
    dotted = ".".join(path)
    return f"[[{dotted}]]" if array else f"[{dotted}]"


def walk(root: type[msgspec.Struct]) -> list[Section]:
    """Every Struct reachable from ``root``, in the order a reader meets them."""
    sections: dict[type, Section] = {}

    def visit(info: mi.StructType, path: list[str], array: bool) -> None:
        section = sections.setdefault(info.cls, Section(info))
        if path:
            section.headers.append(
                _header(path, array) if info.cls not in INLINE else ".".join(path)
            )
        for f in info.fields:
            t = _strip_none(f.type)
            if isinstance(t, mi.StructType) and t.cls in INLINE:
                visit(t, [*path, f.encode_name], False)
                continue
            nested = _nested_struct(f.type)
            if nested is None:
                continue
            child, levels = nested
            names = iter(PLACEHOLDERS.get((info.cls, f.encode_name), ()))
            child_path = [*path, f.encode_name]
            for level in levels:
                if level == "dict":
                    child_path.append(next(names, "<name>"))
            visit(child, child_path, levels[-1:] == ["array"])

    top = mi.type_info(root)
    assert isinstance(top, mi.StructType)
    visit(top, [], False)
    inline = [s for s in sections.values() if s.cls in INLINE]
    tables = [s for s in sections.values() if s.cls not in INLINE]
    return tables + inline


def anchor_of(section: Section, root: type) -> str:
    if section.cls is root:
        return "top-level-keys"
    if section.cls in INLINE:
        return section.cls.__name__.lower()
    first = section.headers[0].strip("[]")
    return re.sub(r"[^a-z0-9]+", "-", first.lower()).strip("-")


# --------------------------------------------------------------------------- render
def _docstring(cls: type) -> str:
    text = cls.__dict__.get("__doc__")
    if not text:
        return ""
    return re.sub(r"``(.+?)``", r"`\1`", inspect.cleandoc(text))


def _default_cell(f: mi.Field) -> str:
    if f.required:
        return "**required**"
    default = _default_of(f)
    if default is None:
        return "unset"
    nested = _nested_struct(f.type)
    if nested is not None and not nested[1]:
        return "its defaults"
    return f"`{toml_value(default)}`".replace("|", "\\|")


def example_lines(section: Section) -> list[str]:
    """``key = value`` lines: defaults as they are, keys without a default
    commented out with an example (required keys with their example, live)."""
    lines: list[str] = []
    for f in section.info.fields:
        if _nested_struct(f.type) is not None:
            continue  # a table of its own: see its section
        example = EXAMPLES.get((section.cls, f.encode_name), msgspec.NODEFAULT)
        if f.required:
            if example is msgspec.NODEFAULT:
                raise KeyError(f"{section.cls.__name__}.{f.name} is required: add it to EXAMPLES")
            lines.append(f"{f.encode_name} = {toml_value(example)}")
            continue
        default = _default_of(f)
        if default is None:
            shown = _placeholder(f.type) if example is msgspec.NODEFAULT else example
            lines.append(f"# {f.encode_name} = {toml_value(shown)}")
        else:
            lines.append(f"{f.encode_name} = {toml_value(default)}")
    return lines


def check_example(section: Section, lines: list[str]) -> None:
    """Decode the snippet, commented keys switched on, into its Struct."""
    live = "\n".join(line.removeprefix("# ") for line in lines)
    try:
        msgspec.convert(tomllib.loads(live), section.cls, strict=True)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"the example for {section.cls.__name__} is invalid: {exc}") from None


def _inline_examples(section: Section) -> list[str]:
    """An inline Struct takes one of several shapes: one line per unset-by-
    default key, each checked on its own."""
    key = section.headers[0].rpartition(".")[2]
    lines = ["# Written inline where a table takes a value source; one of:"]
    for f in section.info.fields:
        example = EXAMPLES.get((section.cls, f.encode_name), msgspec.NODEFAULT)
        if _default_of(f) is None and example is not msgspec.NODEFAULT:
            check_example(section, [f"{f.encode_name} = {toml_value(example)}"])
            lines.append(f"{key} = {{ {f.encode_name} = {toml_value(example)} }}")
    return lines


def _example_block(section: Section, root: type) -> list[str]:
    if section.cls in INLINE:
        body = _inline_examples(section)
    else:
        body = example_lines(section)
        check_example(section, body)
        if section.cls is not root:
            body = [section.headers[0], *body]
    return ["```toml", *body, "```"]


def _title(section: Section, root: type) -> str:
    if section.cls is root:
        return "Top-level keys"
    if section.cls in INLINE:
        return f"Value source (inline table, `{section.cls.__name__}`)"
    return f"`{section.headers[0]}`"


def render_section(section: Section, root: type, anchors: dict[type, str]) -> list[str]:
    cls = section.cls
    out = [f'<a id="{anchors[cls]}"></a>', "", f"## {_title(section, root)}", ""]
    if cls in INLINE:
        used = ", ".join(f"`{h}`" for h in section.headers)
        out += [f"Used by: {used}.", ""]
    elif len(section.headers) > 1:
        also = ", ".join(f"`{h}`" for h in section.headers[1:])
        out += [f"Also at: {also}.", ""]
    doc = _docstring(cls)
    if doc:
        out += [doc, ""]
    out += ["| key | type | default |", "|---|---|---|"]
    for f in section.info.fields:
        cells = (f"`{f.encode_name}`", type_name(f.type, anchors), _default_cell(f))
        out.append("| " + " | ".join(cells) + " |")
    out += ["", *_example_block(section, root), ""]
    return out


INTRO = f"""\
# Configuration reference

<!-- Generated by scripts/gen_config_docs.py from bridge/core/settings.py: do not edit.
     After changing the config Structs, run: {COMMAND} -->

The daemon reads one TOML file (`edge-bridge run --config FILE`, or the
`EDGE_BRIDGE_CONFIG` environment variable).  Every key is optional unless marked
**required**; a key the daemon does not know is an error, reported with its
path, never ignored.  `edge-bridge check-config FILE` checks a file and the
mapping files it includes without starting anything.

Mapping files named in `include` (paths relative to the main file) hold only
`[[mappings]]` tables; their mappings come after those of the main file.  With
no mapping anywhere, the built-in `telemetry` mapping is used (the same as
`mappings/telemetry.toml`).

Each section below is one table: its purpose, each key with its type and
default, and an example with every key at its default (keys that are unset by
default are shown commented out with an example value).
"""


def _changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            path
            for key in before
            for path in _changed_keys(before[key], after.get(key), f"{prefix}{key}.")
        ]
    return [prefix.rstrip(".")] if before != after else []


def _env_section() -> list[str]:
    """What each ``EDGE_BRIDGE_*`` variable overrides, found by applying it to
    the defaults and looking at what changed, so the table follows the code."""
    out = [
        "## Environment variables",
        "",
        "They beat the file; the flags of `edge-bridge run` (see `--help`) beat them.",
        "",
        "| variable | overrides |",
        "|---|---|",
    ]
    base = cfg.Config()
    plain = msgspec.to_builtins(base)
    for variable in ENV_OVERRIDES:
        changed = msgspec.to_builtins(apply_overrides(base, {}, {variable: "x"}))
        keys = ", ".join(f"`{k}`" for k in _changed_keys(plain, changed))
        out.append(f"| `{variable}` | {keys} |")
    out.append("")
    return out


def render(root: type[msgspec.Struct] = cfg.Config) -> str:
    """The whole reference for ``root`` (the daemon's Config by default)."""
    sections = walk(root)
    anchors = {s.cls: anchor_of(s, root) for s in sections}
    out = INTRO.splitlines()
    out += ["", "## Contents", ""]
    out += [f"- [{_title(s, root)}](#{anchors[s.cls]})" for s in sections]
    out.append("")
    if root is cfg.Config:
        out += _env_section()
    for s in sections:
        out += render_section(s, root, anchors)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(REPO)} is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
