"""Property-based: whatever a device publishes, every shipped mapping answers with
records and documented dead-letter reasons, never an exception.

Random bytes, random JSON (nested thousands of levels deep, 300-digit integers,
1e400, NaN, duplicate keys, lone surrogates, bidirectional-override and control
characters, invalid UTF-8) and valid messages with random parts replaced go
through the normalizer of every file in mappings/, on topics with hostile
segments.  The crash barrier would turn an exception into an ``internal_error``
dead letter; here any such error fails the test, with its traceback.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.core.normalize import Normalizer, Outcome
from tests.support.examples import GPS_FIX, READING
from tests.unit.core_fixtures import MAPPINGS, NOW, normalizer_for
from tests.unit.test_hostile_input import DOCUMENTED_REASONS

# Topics of each shipped mapping ("{}" = a segment the tests vary), a valid
# topic and a valid payload, whose parts the tests replace.  A new mapping file
# needs an entry.
SAMPLES: dict[str, tuple[list[str], str, Any]] = {
    "telemetry.toml": (
        ["tenant/{}/device/{}/telemetry"],
        "tenant/t1/device/DEV-001/telemetry",
        {
            "schema_version": 1,
            "device": "DEV-001",
            "metrics": {"temperature": 23.5, "door_open": False, "mode": "eco"},
            "ts": "2026-02-25T14:00:00Z",
        },
    ),
    "site_meter.toml": (
        ["site/{}/meter/{}/reading"],
        "site/plant-7/meter/M-17/reading",
        {
            "schema_version": 1,
            "meter": "M-17",
            "readings": {"energy_kwh": 10234.5, "breaker_closed": True},
            "ts": 1772028000000,
        },
    ),
    "single_reading.toml": (
        ["telemetry/{}/{}/{}"],
        "telemetry/site-001/asset-001/TEMPERATURE",
        READING,
    ),
    "gps_tracker.toml": (["gps/{}/tracker"], "gps/fleet1/tracker", GPS_FIX),
    # Protobuf payloads: random bytes only (the JSON strategies go there too).
    "sparkplug.toml": (
        [
            "spBv1.0/{}/NBIRTH/{}",
            "spBv1.0/{}/NDATA/{}",
            "spBv1.0/{}/DDATA/{}/{}",
            "spBv1.0/{}/DBIRTH/{}/{}",
            "spBv1.0/{}/NDEATH/{}",
            "spBv1.0/{}/{}/{}",
        ],
        "spBv1.0/plant/NDATA/gw1",
        None,
    ),
}
FILES = sorted(path.name for path in MAPPINGS.glob("*.toml"))
BOUNDED = settings(
    max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

# --------------------------------------------------------------------------- strategies
NASTY = [
    "",
    "C27:x y",
    "DEV\u202e1",
    "\u200b",
    "a+b",
    "#",
    "x" * 200,
    "Gerät",
    "\x00",
    "..",
    "\ufffd",  # what the MQTT layer makes of a topic that is not UTF-8
]
segments = st.one_of(
    st.sampled_from(["t1", "DEV-001", "site-001", "M-17", "gw1", "pump"]),
    st.sampled_from(NASTY),
    # No surrogates: the MQTT layer decodes topics with errors="replace".
    st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), max_size=24),
)
FIELD_NAMES = ["schema_version", "device", "metrics", "ts", "value", "data", "x", "", "\u202e"]
NUMBERS = [
    *("1" + "0" * n for n in (19, 20, 300, 309, 4000)),  # beyond 64 bits, beyond a float
    "-1" + "0" * 309,
    str(2**63),
    str(-(2**63) - 1),
    *("1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1e306", "-1e306", "1.7e308"),
    *("-0", "0.1e-400", "01", "1.", ".5"),
]


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


scalars = st.one_of(
    st.sampled_from(["null", "true", "false", *NUMBERS, '"\\ud800"', '"\\u202e"']),
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=30).map(_string),
)


def _object(pairs: list[tuple[str, str]]) -> str:
    """Keys may repeat: a JSON object with duplicate keys."""
    return "{" + ",".join(f"{_string(key)}:{value}" for key, value in pairs) + "}"


json_texts = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(st.sampled_from(FIELD_NAMES), children), max_size=5).map(_object),
    ),
    max_leaves=30,
)
deep_texts = st.one_of(
    st.integers(min_value=60, max_value=5000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=60, max_value=3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(min_value=60, max_value=5000).map(lambda n: "[" * n),
)


def _rendered(doc: Any, replace: Any, path: tuple[str, ...] = ()) -> str:
    """``doc`` as JSON text, with each value that ``replace(path)`` gives text
    for swapped for that text."""
    swapped = replace(path)
    if swapped is not None:
        return str(swapped)
    if isinstance(doc, dict):
        return _object(
            [(key, _rendered(value, replace, (*path, key))) for key, value in doc.items()]
        )
    return json.dumps(doc)


def _paths(doc: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The path of every value of ``doc``, containers included."""
    if not isinstance(doc, dict):
        return [path]
    return [path] + [p for key, value in doc.items() for p in _paths(value, (*path, key))]


@cache
def normalizer(name: str) -> Normalizer:
    return normalizer_for(MAPPINGS / name)


def _topic(data: st.DataObject, name: str) -> str:
    template = data.draw(st.sampled_from(SAMPLES[name][0]))
    return template.format(*(data.draw(segments) for _ in range(template.count("{}"))))


def _checked(name: str, topic: str, payload: bytes, qos: int = 1) -> Outcome:
    """Run one message; fail on any exception the crash barrier caught, and on
    a record that is not what the bridge documents."""
    outcome = normalizer(name).process(topic, payload, NOW, [("k", "v")], qos, qos == 0)
    if outcome.error is not None:
        raise outcome.error
    assert set(outcome.dead) <= DOCUMENTED_REASONS, outcome.dead
    for record in outcome.records:
        if record.topic.endswith(("raw", ".raw")):
            assert record.value == payload
            continue
        value = msgspec.json.decode(record.value)  # JSON, decodable by any consumer
        assert isinstance(value, dict)
        if "reason" in value and "detail" in value:
            assert len(value["detail"]) < 1000
        if "value" in value and isinstance(value["value"], int):
            assert -(2**63) <= value["value"] < 2**63
    return outcome


# --------------------------------------------------------------------------- properties
def test_every_shipped_mapping_has_a_sample() -> None:
    assert sorted(SAMPLES) == FILES


@pytest.mark.parametrize("name", FILES)
@BOUNDED
@given(data=st.data(), payload=st.binary(max_size=300))
def test_random_bytes(name: str, data: st.DataObject, payload: bytes) -> None:
    _checked(name, _topic(data, name), payload, data.draw(st.sampled_from([0, 1])))


@pytest.mark.parametrize("name", FILES)
@BOUNDED
@given(data=st.data(), text=st.one_of(json_texts, deep_texts))
def test_random_json(name: str, data: st.DataObject, text: str) -> None:
    _checked(name, _topic(data, name), text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("name", [name for name in FILES if SAMPLES[name][2] is not None])
@BOUNDED
@given(data=st.data())
def test_valid_messages_with_random_parts(name: str, data: st.DataObject) -> None:
    """Each value of a valid message, at any level, may be swapped for random
    JSON; invalid UTF-8 may be spliced in.  This reaches every rule after the
    decode: identity, time, coercion, catalog, key and header templates."""
    sample = SAMPLES[name][2]
    swap = st.one_of(st.none(), st.none(), st.none(), scalars, json_texts, deep_texts)
    text = _rendered(sample, lambda _path: data.draw(swap))
    payload = text.encode("utf-8", "surrogatepass")
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(min_value=0, max_value=len(payload)))
        payload = payload[:cut] + b"\xff\xfe" + payload[cut:]
    _checked(name, _topic(data, name), payload)


@pytest.mark.parametrize("name", [name for name in FILES if SAMPLES[name][2] is not None])
@BOUNDED
@given(value=st.one_of(st.sampled_from(NUMBERS), st.sampled_from(NASTY).map(_string), scalars))
def test_one_hostile_value_in_each_place(name: str, value: str) -> None:
    """The same hostile value in each place of a valid message in turn: every
    field the mapping reads meets every kind of number and string."""
    _, topic, sample = SAMPLES[name]
    for place in _paths(sample):
        text = _rendered(sample, lambda path, place=place: value if path == place else None)
        _checked(name, topic, text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("name", [name for name in FILES if SAMPLES[name][2] is not None])
def test_the_samples_are_valid(name: str) -> None:
    _, topic, sample = SAMPLES[name]
    normalizer.cache_clear()  # a fresh one: the sample's event id may have been seen
    outcome = _checked(name, topic, json.dumps(sample).encode())
    assert outcome.clean and not outcome.dead, outcome.dead
