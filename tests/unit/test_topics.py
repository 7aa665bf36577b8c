"""Topic filters with named segments, the subscriptions they make, and templates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.core.topics import Template, TopicFilter, TopicSyntaxError, segment_problem
from tests.unit.core_fixtures import plan_from

DEFAULT = TopicFilter.parse("tenant/{tenant}/device/{device}/telemetry")


def test_named_segments_are_captured_and_subscribed_as_plus() -> None:
    assert DEFAULT.names == ("tenant", "device")
    assert DEFAULT.subscription == "tenant/+/device/+/telemetry"
    topic = ["tenant", "t1", "device", "DEV-001", "telemetry"]
    assert DEFAULT.match(topic) == {"tenant": "t1", "device": "DEV-001"}


@pytest.mark.parametrize(
    "topic",
    [
        "tenant/t1/device/DEV-001",  # too short
        "tenant/t1/device/DEV-001/telemetry/extra",  # too long
        "tenant/t1/devices/DEV-001/telemetry",  # literal differs
        "Tenant/t1/device/DEV-001/telemetry",  # literals are case-sensitive
    ],
)
def test_a_topic_of_another_shape_does_not_match(topic: str) -> None:
    assert DEFAULT.match(topic.split("/")) is None


def test_an_empty_level_still_matches_so_that_it_can_be_refused() -> None:
    # The normalizer turns this into invalid_topic instead of ignoring it.
    assert DEFAULT.match(["tenant", "", "device", "x", "telemetry"]) == {
        "tenant": "",
        "device": "x",
    }


def test_plus_matches_one_level_and_captures_nothing() -> None:
    parsed = TopicFilter.parse("site/+/meter/{meter}")
    assert parsed.names == ("meter",)
    assert parsed.subscription == "site/+/meter/+"
    assert parsed.match(["site", "s1", "meter", "m7"]) == {"meter": "m7"}
    assert parsed.match(["site", "s1", "x", "meter", "m7"]) is None


def test_hash_matches_the_parent_level_and_any_depth_below() -> None:
    parsed = TopicFilter.parse("gps/{tenant}/#")
    assert parsed.subscription == "gps/+/#"
    assert parsed.match(["gps", "t1"]) == {"tenant": "t1"}
    assert parsed.match(["gps", "t1", "a"]) == {"tenant": "t1"}
    assert parsed.match(["gps", "t1", "a", "b", "c"]) == {"tenant": "t1"}
    assert parsed.match(["gps"]) is None
    assert parsed.match(["gpx", "t1", "a"]) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the topic filter is empty"),
        ("a/{x}/b/{x}", "segment {x} appears twice"),
        ("a/#/b", "'#' must be the last level"),
        ("a/dev{x}/b", "must be a literal, {name}, '+' or '#'"),
        ("a/{x y}/b", "must be a literal, {name}, '+' or '#'"),
        ("a/b+/c", "must be a literal, {name}, '+' or '#'"),
        ("a/b#", "must be a literal, {name}, '+' or '#'"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(TopicSyntaxError, match=message.replace("{", r"\{").replace("+", r"\+")):
        TopicFilter.parse(text)


def test_shared_group_prefixes_the_subscription(tmp_config: Callable[..., Path]) -> None:
    path = tmp_config(
        """
        [[mappings]]
        mqtt = { topic = "tenant/{tenant}/device/{device}/telemetry", shared_group = "bridges" }
        """
    )
    (mapping,) = plan_from(path).mappings
    assert mapping.subscription == "$share/bridges/tenant/+/device/+/telemetry"
    # Matching is against the topic the message was published on, without the prefix.
    assert mapping.filter.match(["tenant", "t1", "device", "D", "telemetry"]) == {
        "tenant": "t1",
        "device": "D",
    }


def test_without_a_group_the_subscription_is_the_plain_filter(
    tmp_config: Callable[..., Path],
) -> None:
    (mapping,) = plan_from(tmp_config("[[mappings]]\n")).mappings
    assert mapping.subscription == "tenant/+/device/+/telemetry"


def test_template_renders_literals_and_placeholders() -> None:
    template = Template.parse("{site}:{meter}/x")
    assert template.names == ("site", "meter")
    assert template.render({"site": "s1", "meter": "m7", "tenant": "unused"}) == "s1:m7/x"
    assert Template.parse("fixed").render({}) == "fixed"
    assert Template.parse("").render({}) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{tenant", "unbalanced brace"),
        ("tenant}", "unbalanced brace"),
        ("a}b{tenant}", "unbalanced brace"),
        ("{{tenant}}", "unbalanced brace"),
        ("{}", "placeholder {} in '{}' is not a name"),
        ("{1x}", "is not a name"),
        ("{a-b}", "is not a name"),
    ],
)
def test_bad_templates_are_refused(text: str, message: str) -> None:
    with pytest.raises(TopicSyntaxError) as caught:
        Template.parse(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("DEV-001", None),
        ("x" * 8, None),
        ("", "is empty"),
        ("x" * 9, "is longer than 8 characters"),
        ("a+b", "contains '+'"),
        ("a#", "contains '#'"),
        ("a\x00", "contains '\\x00'"),
    ],
)
def test_segment_problem(value: str, problem: str | None) -> None:
    assert segment_problem(value, max_length=8) == problem
