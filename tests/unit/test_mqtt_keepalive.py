"""The keepalive rule: any byte from the broker counts as an answer."""

from __future__ import annotations

from bridge.io.mqtt_keepalive import Keepalive


def test_traffic_both_ways_needs_no_ping() -> None:
    keepalive = Keepalive(5, now=0)
    for second in range(1, 60):
        keepalive.received(second)
        keepalive.sent(second)
        assert not keepalive.ping_due(second)
        assert not keepalive.expired(second)


def test_ping_when_we_sent_nothing_for_an_interval() -> None:
    keepalive = Keepalive(5, now=0)
    keepalive.received(4.9)
    assert not keepalive.ping_due(4.9)
    assert keepalive.ping_due(5.0)  # the broker must hear from us in time


def test_an_unanswered_ping_ends_the_connection_after_one_interval() -> None:
    keepalive = Keepalive(5, now=0)
    assert keepalive.ping_due(5)
    keepalive.pinged(5)
    assert not keepalive.ping_due(6)  # one ping at a time
    assert not keepalive.expired(9.9)
    assert keepalive.expired(10)
    assert keepalive.silent_for(10) == 10


def test_any_byte_answers_a_ping_a_late_pingresp_does_not_matter() -> None:
    keepalive = Keepalive(5, now=0)
    keepalive.pinged(5)
    for second in range(6, 60):  # a backlog arriving, the PINGRESP behind it
        keepalive.received(second)
        assert not keepalive.expired(second)
        if keepalive.ping_due(second):
            keepalive.pinged(second)


def test_keepalive_zero_never_pings_nor_expires() -> None:
    keepalive = Keepalive(0, now=0)
    assert not keepalive.ping_due(1e6)
    assert not keepalive.expired(1e6)
