"""Value rules: what each coercion accepts, what it makes of it, and how it refuses."""

from __future__ import annotations

import pytest

from bridge.core.coerce import InputRejected, make_coercer, parse_number, typed_value


def refused(call: object, raw: object) -> InputRejected:
    assert callable(call)
    with pytest.raises(InputRejected) as caught:
        call(raw)
    return caught.value


# --------------------------------------------------------------------------- auto
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (23.5, (23.5, "numeric")),
        (60, (60, "numeric")),
        (-0.0, (-0.0, "numeric")),
        (False, (False, "bool")),
        (True, (True, "bool")),
        ("eco", ("eco", "str")),
        ("", ("", "str")),
        ("x" * 256, ("x" * 256, "str")),
    ],
)
def test_typed_value_keeps_the_json_type(raw: object, expected: tuple[object, str]) -> None:
    value, metric_type = typed_value(raw, 256)
    assert (value, metric_type) == expected
    assert type(value) is type(expected[0])  # True stays a bool, 60 stays an int


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (None, "a null is not a number, bool or string"),
        ([1, 2], "a list is not a number, bool or string"),
        ({"a": 1}, "a dict is not a number, bool or string"),
        (float("nan"), "nan is not a finite number"),
        (float("inf"), "inf is not a finite number"),
        ("x" * 257, "string longer than 256 characters"),
    ],
)
def test_typed_value_refusals(raw: object, detail: str) -> None:
    refusal = refused(lambda r: typed_value(r, 256), raw)
    assert (refusal.reason, refusal.detail) == ("metric_type_invalid", detail)


def test_auto_rule_names_the_field() -> None:
    coerce = make_coercer("auto", "value", max_string=4)
    assert coerce(1.5) == (1.5, "numeric")
    assert coerce("abcd") == ("abcd", "str")
    refusal = refused(coerce, "abcde")
    assert (refusal.reason, refusal.detail) == (
        "metric_type_invalid",
        "value: string longer than 4 characters",
    )


# --------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+20.652472", 20.652472),
        ("-100.391423", -100.391423),
        ("0.00", 0.0),
        ("9", 9),
        ("-3", -3),
        (" 7 ", 7),
        ("1e3", 1000.0),
        (".5", 0.5),
    ],
)
def test_parse_number(text: str, expected: float) -> None:
    number = parse_number(text)
    assert number == expected
    assert type(number) is type(expected)  # "9" is an int, "0.00" a float


@pytest.mark.parametrize(
    "text", ["", " ", "abc", "nan", "inf", "-Infinity", "1_000", "1_0.5", "١٢", "0x10", "1,5"]
)
def test_parse_number_refuses_what_is_not_a_plain_number(text: str) -> None:
    with pytest.raises(ValueError):
        parse_number(text)


def test_numeric_rule() -> None:
    coerce = make_coercer("numeric", "data.SPEED", max_string=256)
    assert coerce(12) == (12, "numeric")
    assert coerce(12.5) == (12.5, "numeric")
    assert coerce("12.50") == (12.5, "numeric")


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ("fast", "data.SPEED: 'fast' is not a number, rule numeric"),
        ("NaN", "data.SPEED: 'NaN' is not a number, rule numeric"),
        (True, "data.SPEED: True is a bool, rule numeric"),
        (None, "data.SPEED: None is not a number, rule numeric"),
        ([1], "data.SPEED: [1] is not a number, rule numeric"),
        (float("inf"), "data.SPEED: inf is not a number, rule numeric"),
    ],
)
def test_numeric_rule_refusals_name_field_and_rule(raw: object, detail: str) -> None:
    refusal = refused(make_coercer("numeric", "data.SPEED", max_string=256), raw)
    assert (refusal.reason, refusal.detail) == ("coercion_failed", detail)


# --------------------------------------------------------------------------- booleans
def test_bool_rule_uses_the_declared_words_case_insensitively() -> None:
    coerce = make_coercer(
        "bool", "data.ENGINE_STATUS", max_string=256, true_words=["ON"], false_words=["OFF"]
    )
    assert coerce("ON") == (True, "bool")
    assert coerce("on") == (True, "bool")
    assert coerce(" Off ") == (False, "bool")
    assert coerce(False) == (False, "bool")
    refusal = refused(coerce, "yes")  # not declared for this field
    assert (refusal.reason, refusal.detail) == (
        "coercion_failed",
        "data.ENGINE_STATUS: 'yes' is not one of ON/OFF, rule bool",
    )
    assert refused(coerce, 1).detail == "data.ENGINE_STATUS: 1 is not one of ON/OFF, rule bool"


def test_bool_rule_with_the_default_words() -> None:
    from bridge.core.settings import FieldRule

    rule = FieldRule(field="door", type="bool")
    coerce = make_coercer(
        "bool", "door", max_string=256, true_words=rule.true, false_words=rule.false
    )
    assert [coerce(w)[0] for w in ("true", "on", "yes", "1")] == [True] * 4
    assert [coerce(w)[0] for w in ("false", "off", "no", "0")] == [False] * 4


# --------------------------------------------------------------------------- strings
def test_str_rule_with_an_enum() -> None:
    coerce = make_coercer("str", "quality_flag", max_string=8, enum=["GOOD", "BAD"])
    assert coerce("GOOD") == ("GOOD", "str")
    refusal = refused(coerce, "good")  # enums are exact
    assert (refusal.reason, refusal.detail) == (
        "value_not_allowed",
        "quality_flag: 'good' is not one of ['BAD', 'GOOD']",
    )
    refusal = refused(coerce, 1)
    assert (refusal.reason, refusal.detail) == (
        "coercion_failed",
        "quality_flag: 1 is not a string, rule str",
    )
    refusal = refused(coerce, "x" * 9)
    assert (refusal.reason, refusal.detail) == (
        "metric_type_invalid",
        "quality_flag: string longer than 8 characters",
    )


def test_str_rule_without_an_enum_accepts_any_bounded_string() -> None:
    coerce = make_coercer("str", "mode", max_string=8)
    assert coerce("anything") == ("anything", "str")
