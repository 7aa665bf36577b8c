"""``[[streams]]`` checks (bridge.core.stream_plan): the three examples
compile; sections that cannot work are refused with the path of the bad field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bridge.config_loader import ConfigError, load_config
from bridge.core.plan import PlanError, compile_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["channels", "gps-passthrough", "customer-portal"])
def test_the_examples_compile(name: str) -> None:
    plan = compile_config(load_config(REPO / "examples" / "streams" / f"{name}.toml"))
    assert len(plan.streams) == 1


def test_no_streams_no_endpoint_plans() -> None:
    assert compile_config(load_config(None)).streams == ()


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bridge.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(PlanError) as caught:
        compile_config(load_config(path))
    return caught.value.errors


def test_unknown_envelope_field_and_a_field_the_source_cannot_give(tmp_path: Path) -> None:
    lines = errors(
        tmp_path,
        """
        [[streams]]
        name = "a"
        auth = "jwt"
        websocket_path = "/a"
        envelope = { kind = "message", template = { x = "{colour}" } }
        [[streams]]
        name = "b"
        auth = "jwt"
        websocket_path = "/b"
        envelope = { kind = "message", template = { t = "{topic}" } }
        """,
    )
    assert lines[0].startswith("streams[0].envelope.template.x: unknown placeholder {colour}")
    assert lines[1] == "streams[1].envelope.template: source read = 'clean' cannot give {topic}"


def test_two_endpoints_on_one_path_and_reserved_paths(tmp_path: Path) -> None:
    lines = errors(
        tmp_path,
        """
        [[streams]]
        name = "a"
        auth = "jwt"
        websocket_path = "/live"
        [[streams]]
        name = "b"
        auth = "none"
        sse_path = "/live"
        status_path = "/metrics"
        """,
    )
    assert lines == [
        "streams[1].sse_path: /live is already served by streams[0]",
        "streams[1].status_path: /metrics is already served by the daemon",
    ]


def test_metric_filter_on_a_source_without_metrics(tmp_path: Path) -> None:
    lines = errors(
        tmp_path,
        """
        [[streams]]
        name = "gps"
        auth = "none"
        websocket_path = "/gps"
        envelope = { kind = "passthrough" }
        source = { read = "json", device = { field = "data.DEVICE_ID" } }
        """,
    )
    assert lines == [
        'streams[0].filters.metric: the source gives no metrics (read = "json" without '
        "fields or metrics_object): set metric = []"
    ]


def test_bad_sources(tmp_path: Path) -> None:
    lines = errors(
        tmp_path,
        """
        [[streams]]
        name = "a"
        auth = "jwt"
        websocket_path = "/a"
        envelope = { kind = "passthrough" }
        source = { read = "mapping", mapping = "nope" }
        [[streams]]
        name = "b"
        auth = "jwt"
        websocket_path = "/b"
        envelope = { kind = "passthrough" }
        filters = { metric = [] }
        source = { read = "json", device = { segment = "device" } }
        [[streams]]
        name = "c"
        auth = "jwt"
        websocket_path = "/c"
        source = { read = "json", device = { field = "d" } }
        filters = { metric = [] }
        """,
    )
    assert lines == [
        "streams[0].source.mapping: no mapping named 'nope' (known: telemetry)",
        "streams[1].source.device.segment: segment {device} is not in the topic filter "
        "(it has: none)",
        'streams[2].envelope.kind: the "update" envelope carries clean records: read = "clean"',
    ]


def test_auth_must_be_stated(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('[[streams]]\nname = "a"\nwebsocket_path = "/a"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "streams[0]" in str(caught.value) and "auth" in str(caught.value)
