"""Event-time parsing: every accepted form, every refusal, and the UTC output."""

from __future__ import annotations

import pytest

from bridge.core.timestamps import (
    TimestampError,
    format_ms,
    make_parser,
    parse_auto,
    parse_epoch_ms,
    parse_epoch_s,
    parse_iso,
    zone_for,
)

T0 = 1_772_028_000_000  # 2026-02-25T14:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-02-25T14:00:00Z", T0),
        ("2026-02-25T14:00:00+00:00", T0),
        ("2026-02-25T16:00:00+02:00", T0),
        ("2026-02-25T08:30:00-05:30", T0),
        ("2026-02-25T14:00:00.250Z", T0 + 250),
        ("2026-02-25T15:00:00.5+01:00", T0 + 500),
        # Microseconds are truncated to the millisecond, never rounded up.
        ("2026-02-25T14:00:00.123999Z", T0 + 123),
        ("2026-02-25 14:00:00Z", T0),
    ],
)
def test_iso_with_an_offset(text: str, expected: int) -> None:
    assert parse_iso(text) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("2026-02-25T14:00:00", "'2026-02-25T14:00:00' has no UTC offset"),
        ("2026-02-25", "'2026-02-25' has no UTC offset"),
        ("yesterday", "'yesterday' is not ISO-8601"),
        ("2026-02-30T14:00:00Z", "'2026-02-30T14:00:00Z' is not ISO-8601"),
        (1772028000, "expected an ISO-8601 string, got 1772028000"),
        ("1999-12-31T23:59:59Z", "'1999-12-31T23:59:59Z' is outside 2000-01-01..2100-01-01"),
        ("2100-01-01T00:00:00Z", "is outside 2000-01-01..2100-01-01"),
    ],
)
def test_iso_refusals_say_why(raw: object, message: str) -> None:
    with pytest.raises(TimestampError) as caught:
        parse_iso(raw)
    assert message in str(caught.value)


def test_epoch_milliseconds_and_seconds() -> None:
    assert parse_epoch_ms(T0) == T0
    assert parse_epoch_ms(T0 + 0.9) == T0  # a fractional millisecond is dropped
    assert parse_epoch_s(T0 // 1000) == T0
    assert parse_epoch_s(1_772_028_000.25) == T0 + 250


@pytest.mark.parametrize(
    ("parser", "raw", "message"),
    [
        # Seconds where milliseconds are expected, and the reverse, land outside
        # the plausible range instead of becoming a date in 1970 or 58000.
        (parse_epoch_ms, 1_772_028_000, "1772028000 is outside 2000-01-01..2100-01-01"),
        (parse_epoch_s, T0, "is outside 2000-01-01..2100-01-01"),
        (parse_epoch_ms, -1, "is outside"),
        (parse_epoch_ms, "1772028000000", "expected epoch milliseconds as a number"),
        (parse_epoch_ms, True, "expected epoch milliseconds as a number, got True"),
        (parse_epoch_ms, float("nan"), "expected epoch milliseconds, got nan"),
        (parse_epoch_s, float("inf"), "expected epoch seconds, got inf"),
        (parse_epoch_s, None, "expected epoch seconds as a number, got None"),
    ],
)
def test_epoch_refusals(parser: object, raw: object, message: str) -> None:
    assert callable(parser)
    with pytest.raises(TimestampError) as caught:
        parser(raw)
    assert message in str(caught.value)


def test_range_bounds_are_inclusive_below_and_exclusive_above() -> None:
    assert parse_epoch_ms(946_684_800_000) == 946_684_800_000  # 2000-01-01T00:00:00Z
    with pytest.raises(TimestampError):
        parse_epoch_ms(946_684_799_999)
    assert parse_epoch_ms(4_102_444_799_999) == 4_102_444_799_999
    with pytest.raises(TimestampError):
        parse_epoch_ms(4_102_444_800_000)


def test_auto_reads_strings_as_iso_and_numbers_as_milliseconds() -> None:
    assert parse_auto("2026-02-25T14:00:00Z") == T0
    assert parse_auto(T0) == T0
    with pytest.raises(TimestampError, match="has no UTC offset"):
        parse_auto("2026-02-25T14:00:00")
    with pytest.raises(TimestampError, match="is outside"):
        parse_auto(T0 // 1000)


@pytest.mark.parametrize(
    ("tz", "local", "utc"),
    [
        # Mexico City has had no daylight saving time since 2022: UTC-6 all year.
        ("America/Mexico_City", "2025-10-18 00:51:16", "2025-10-18T06:51:16Z"),
        ("America/Mexico_City", "2025-01-18 00:51:16", "2025-01-18T06:51:16Z"),
        # A zone with DST: the offset follows the date.
        ("Europe/Berlin", "2025-07-01 12:00:00", "2025-07-01T10:00:00Z"),
        ("Europe/Berlin", "2025-01-01 12:00:00", "2025-01-01T11:00:00Z"),
        ("America/New_York", "2025-03-09 01:59:59", "2025-03-09T06:59:59Z"),
        ("America/New_York", "2025-03-09 03:00:00", "2025-03-09T07:00:00Z"),
        # The repeated hour when clocks go back is read as its first occurrence.
        ("America/New_York", "2025-11-02 01:30:00", "2025-11-02T05:30:00Z"),
        ("UTC", "2025-10-18 00:51:16", "2025-10-18T00:51:16Z"),
        ("utc", "2025-10-18 00:51:16", "2025-10-18T00:51:16Z"),
    ],
)
def test_strftime_pattern_read_in_its_zone(tz: str, local: str, utc: str) -> None:
    parse = make_parser("%Y-%m-%d %H:%M:%S", tz)
    assert format_ms(parse(local)) == utc


def test_an_offset_in_the_pattern_wins_over_the_declared_zone() -> None:
    parse = make_parser("%Y-%m-%dT%H:%M:%S%z", "America/Mexico_City")
    assert format_ms(parse("2025-10-18T00:51:16+0000")) == "2025-10-18T00:51:16Z"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("2025-10-18T00:51:16", "'2025-10-18T00:51:16' does not match format '%Y-%m-%d %H:%M:%S'"),
        ("2025-13-18 00:51:16", "does not match format"),
        ("", "does not match format"),
        (1760748676, "expected a string in format '%Y-%m-%d %H:%M:%S', got 1760748676"),
        ("1999-10-18 00:51:16", "is outside 2000-01-01..2100-01-01"),
    ],
)
def test_strftime_refusals(raw: object, message: str) -> None:
    parse = make_parser("%Y-%m-%d %H:%M:%S", "America/Mexico_City")
    with pytest.raises(TimestampError) as caught:
        parse(raw)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("fmt", "tz", "message"),
    [
        ("unix", "UTC", "unknown time format 'unix': use auto, iso, epoch_s, epoch_ms"),
        ("%Y-%m-%d", "Mars/Olympus_Mons", "unknown time zone 'Mars/Olympus_Mons'"),
        ("%Y-%m-%d", "../etc/passwd", "unknown time zone"),
        ("%Y-%m-%d %H:%M:%Q", "UTC", "'Q' is a bad directive"),
    ],
)
def test_bad_rules_fail_when_the_parser_is_made(fmt: str, tz: str, message: str) -> None:
    with pytest.raises(TimestampError) as caught:
        make_parser(fmt, tz)
    assert message in str(caught.value)


def test_named_formats_ignore_the_zone() -> None:
    assert make_parser("iso", "UTC") is parse_iso
    assert make_parser("epoch_ms", "UTC") is parse_epoch_ms
    assert make_parser("epoch_s", "UTC") is parse_epoch_s
    assert make_parser("auto", "UTC") is parse_auto


def test_zone_for() -> None:
    assert zone_for("UTC").utcoffset(None) is not None
    assert str(zone_for("America/Mexico_City")) == "America/Mexico_City"


@pytest.mark.parametrize(
    ("epoch_ms", "text"),
    [
        (T0, "2026-02-25T14:00:00Z"),
        (T0 + 7, "2026-02-25T14:00:00.007Z"),
        (T0 + 999, "2026-02-25T14:00:00.999Z"),
        (946_684_800_000, "2000-01-01T00:00:00Z"),
    ],
)
def test_output_is_utc_with_z_and_milliseconds_only_when_nonzero(epoch_ms: int, text: str) -> None:
    assert format_ms(epoch_ms) == text
