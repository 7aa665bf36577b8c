"""docs/configuration.md is generated from bridge/core/settings.py and must not drift.

When the first test fails, run ``.venv/bin/python scripts/gen_config_docs.py``
and commit the result with the config change."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Literal

import msgspec
import pytest

from bridge.core.settings import Config

REPO = Path(__file__).resolve().parents[2]


def _load_generator() -> ModuleType:
    path = REPO / "scripts" / "gen_config_docs.py"
    spec = importlib.util.spec_from_file_location("gen_config_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def test_committed_reference_matches_the_config_structs() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == gen.render(), (
        "docs/configuration.md is stale: run .venv/bin/python scripts/gen_config_docs.py"
    )


class Tls(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Certificates for the example."""

    ca_file: str | None = None


class Item(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One item of a list of tables."""

    size: int
    mode: Literal["fast", "safe"] = "safe"


class Root(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The root of a small config."""

    listen: str = "0.0.0.0:80"
    retries: int = 100_000
    tls: Tls | None = None
    items: list[Item] = msgspec.field(default_factory=list)


def test_every_key_gets_its_type_default_and_its_structs_docstring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(gen.EXAMPLES, (Item, "size"), 3)
    monkeypatch.setitem(gen.EXAMPLES, (Tls, "ca_file"), "/etc/ca.pem")
    text = gen.render(Root)
    assert "The root of a small config." in text
    assert '| `listen` | string | `"0.0.0.0:80"` |' in text
    assert "| `retries` | integer | `100_000` |" in text
    assert "| `tls` | [table](#tls) | unset |" in text
    assert "| `items` | array of [table](#items) | `[]` |" in text
    assert "## `[tls]`" in text and "Certificates for the example." in text
    assert '| `mode` | `"fast"` \\| `"safe"` | `"safe"` |' in text
    assert "| `size` | integer | **required** |" in text
    # Examples: defaults live, unset keys commented with their example,
    # required keys live with theirs; tables of their own under their header.
    assert '```toml\nlisten = "0.0.0.0:80"\nretries = 100_000\n```' in text
    assert '```toml\n[tls]\n# ca_file = "/etc/ca.pem"\n```' in text
    assert '```toml\n[[items]]\nsize = 3\nmode = "safe"\n```' in text


def test_a_required_key_needs_an_example() -> None:
    with pytest.raises(KeyError, match=r"Item\.size is required: add it to EXAMPLES"):
        gen.render(Root)


def test_an_example_the_daemon_would_refuse_is_not_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(gen.EXAMPLES, (Item, "size"), "three")
    with pytest.raises(ValueError, match="the example for Item is invalid"):
        gen.render(Root)


def test_toml_examples_in_security_md_are_valid_config() -> None:
    """Every ```toml block of the hand-written page decodes as (part of) a config."""
    text = (REPO / "docs" / "security.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert blocks
    for block in blocks:
        try:
            msgspec.convert(tomllib.loads(block), Config, strict=True)
        except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
            pytest.fail(f"docs/security.md: invalid example: {exc}\n{block}")


def test_check_mode_reports_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "docs" / "configuration.md"
    stale.parent.mkdir()
    stale.write_text("# old\n")
    monkeypatch.setattr(gen, "REPO", tmp_path)
    monkeypatch.setattr(gen, "OUTPUT", stale)
    assert gen.main(["--check"]) == 1
    assert "run .venv/bin/python scripts/gen_config_docs.py" in capsys.readouterr().err
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
