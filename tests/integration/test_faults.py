"""Fault tests with exact counts: nothing acknowledged is ever lost.

Each test runs the real daemon between a real mosquitto and a real
Kafka-protocol broker (Tansu), publishes numbered QoS 1 messages at a steady
rate while a fault happens, and then checks that every number mosquitto
acknowledged to the publisher is on the clean topic at least once. Duplicates
are allowed (at-least-once) but bounded and counted: each test prints a line
``sent= received= unique= duplicates= missing=`` to the terminal and records it
in the JUnit report.

Durations are counted in published messages (the publisher's rate is the
clock): a fault "held for 10 s" is held while 10 s worth of messages go out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.core.spool_format import HEADER_SIZE, Stop, decode_frames, encode_frame
from tests.integration.conftest import QUICK_STOP, BridgeSetup
from tests.support import BridgeProcess, Tansu, publish_many, wait_until
from tests.support.sequenced import (
    ACKED,
    SequencePublisher,
    Tally,
    check_delivered,
    daemon_metric,
    qos0_burst_dropped,
    raw_seq,
    report,
    sequence_payload,
    sequence_topic,
    set_kafka,
    settle,
    tally,
)

RATE = 100
"""Messages per second (each makes a clean and a raw record)."""

FAST_TIMEOUT_MS = 3000
"""kafka.delivery_timeout_ms in these tests: a frozen broker hands over to the
spool after 3 s instead of the default 15 s."""

DUPLICATES_AT_MOST = RATE * FAST_TIMEOUT_MS // 1000
"""Duplicates come from records Kafka took without the bridge learning it in
time (in flight when the fault hit), redelivered by mosquitto or sent again
from the spool: at most what one delivery timeout lets pile up."""


def start(config: Path) -> BridgeProcess:
    """The daemon, once ready (killed if it does not get there)."""
    bridge = BridgeProcess(config)
    try:
        bridge.wait_for_event("bridge.ready", timeout=30)
    except BaseException:
        bridge.kill()
        raise
    return bridge


def fault_config(setup: BridgeSetup, spool: str = "") -> Path:
    """This test's config with the short delivery timeout; ``spool`` adds keys to [spool]."""
    return set_kafka(setup.config(spool), delivery_timeout_ms=FAST_TIMEOUT_MS)


def publisher(setup: BridgeSetup, first: int = 0) -> SequencePublisher:
    return SequencePublisher(
        setup.mosquitto.url, rate=RATE, client_id=f"pub-{setup.unique}", first=first
    )


def delivered(request: pytest.FixtureRequest, result: Tally, label: str) -> None:
    check_delivered(request, result, label, duplicate_bound=DUPLICATES_AT_MOST)


def test_kafka_frozen_ten_seconds_mid_stream(
    setup: BridgeSetup, request: pytest.FixtureRequest
) -> None:
    """SIGSTOP the broker for 10 s: after the delivery timeout the spool takes
    over (and acknowledges), after SIGCONT the spool drains."""
    bridge = start(fault_config(setup))
    try:
        with publisher(setup) as pub:
            pub.wait_published(2 * RATE)
            mark = bridge.mark()
            frozen_at = pub.published
            setup.tansu.pause()
            try:
                bridge.wait_for_event("spool.active", timeout=20, since=mark)
                pub.wait_published(frozen_at + 10 * RATE)
            finally:
                setup.tansu.resume()
            pub.wait_published(frozen_at + 12 * RATE)
            sent = pub.stop()
        bridge.wait_for_event("spool.drained", timeout=60, since=mark)
        result = settle(bridge, setup.tansu.bootstrap, setup.clean, sent)
    finally:
        bridge.kill()
    delivered(request, result, "kafka frozen 10 s")


def test_kafka_unreachable_at_start_reachable_later(
    setup: BridgeSetup, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Nothing listens at the bootstrap address when the daemon starts; a broker
    comes up there later.  Until then the spool holds (and acknowledges) all."""
    late = Tansu(tmp_path / "late-tansu")  # its port is chosen; it starts below
    bridge = start(set_kafka(fault_config(setup), bootstrap=late.bootstrap))
    try:
        with publisher(setup) as pub:
            # librdkafka says no broker answers: the spool takes over at once,
            # not after a delivery timeout.
            bridge.wait_for_event("spool.active", timeout=20, reason="Kafka is unreachable")
            pub.wait_published(pub.published + 3 * RATE)
            late.start()
            pub.wait_published(pub.published + 2 * RATE)
            sent = pub.stop()
        result = settle(bridge, late.bootstrap, setup.clean, sent)
    finally:
        bridge.kill()
        late.stop()
    delivered(request, result, "kafka unreachable at start")


def test_bridge_killed_mid_stream_and_restarted(
    setup: BridgeSetup, request: pytest.FixtureRequest
) -> None:
    """kill -9, traffic goes on, the same config (spool, MQTT session) starts again."""
    config = fault_config(setup)
    first = start(config)  # its first connection creates the MQTT session
    try:
        with publisher(setup) as pub:
            pub.wait_published(pub.published + 2 * RATE)
            first.kill()
            pub.wait_published(pub.published + 2 * RATE)  # mosquitto queues these
            second = start(config)
            try:
                connected = second.wait_for_event("mqtt.connected")
                assert connected["session_present"] is True, connected
                pub.wait_published(pub.published + 2 * RATE)
                sent = pub.stop()
                result = settle(second, setup.tansu.bootstrap, setup.clean, sent)
            finally:
                second.kill()
    finally:
        first.kill()
    delivered(request, result, "bridge kill -9 and restart")


def test_mosquitto_restarted_mid_stream(setup: BridgeSetup, request: pytest.FixtureRequest) -> None:
    """The broker goes away and comes back with its persisted sessions; the
    bridge reconnects, unacknowledged messages are redelivered."""
    bridge = start(fault_config(setup))
    try:
        with publisher(setup) as pub:
            pub.wait_published(2 * RATE)
            mark = bridge.mark()
            setup.mosquitto.restart()
            bridge.wait_for_event("mqtt.disconnected", since=mark)
            again = bridge.wait_for_event("mqtt.connected", timeout=30, since=mark)
            assert again["session_present"] is True, again
            pub.wait_published(pub.published + 2 * RATE)
            sent = pub.stop()
        result = settle(bridge, setup.tansu.bootstrap, setup.clean, sent)
    finally:
        bridge.kill()
    delivered(request, result, "mosquitto restart")


TINY_SPOOL = "segment_bytes = 81920\nmax_bytes = 163840\n"
"""Two segments: a few hundred records fill it."""


def test_spool_full_backpressure_loses_nothing(
    setup: BridgeSetup, request: pytest.FixtureRequest
) -> None:
    """Kafka frozen, the tiny spool fills: the bridge stops acknowledging, so
    mosquitto keeps the backlog; after the resume everything arrives.  QoS 0
    messages meanwhile, which nothing can hold back, are dropped and counted
    rather than piled up in the bridge's memory."""
    bridge = start(fault_config(setup, spool=TINY_SPOOL + 'when_full = "backpressure"'))
    try:
        with publisher(setup) as pub:
            pub.wait_published(RATE)
            mark = bridge.mark()
            setup.tansu.pause()
            try:
                bridge.wait_for_event("spool.full", timeout=30, since=mark)
                qos0_burst_dropped(setup.mosquitto.url, setup.listen_port, 1000)
                pub.wait_published(pub.published + 3 * RATE)  # held by mosquitto
            finally:
                setup.tansu.resume()
            pub.wait_published(pub.published + 2 * RATE)
            sent = pub.stop()
        bridge.wait_for_event("spool.drained", timeout=60, since=mark)
        result = settle(bridge, setup.tansu.bootstrap, setup.clean, sent)
    finally:
        bridge.kill()
    assert not bridge.events("spool.dropped_oldest")
    assert bridge.events("ingest.qos0_dropped")
    delivered(request, result, "spool full, backpressure")


def test_spool_full_drop_oldest_loses_no_more_than_it_logs(
    setup: BridgeSetup, request: pytest.FixtureRequest
) -> None:
    """Kafka frozen, the tiny spool fills: the oldest segments go, each drop is
    logged with its record count, and nothing is lost beyond that count.

    The count can exceed the loss, never fall short of it: a record the drain
    had already sent to the frozen broker when its segment was deleted may
    still be written by the broker once it runs again (the bridge saw its
    delivery time out and cannot know)."""
    bridge = start(fault_config(setup, spool=TINY_SPOOL + 'when_full = "drop_oldest"'))
    try:
        with publisher(setup) as pub:
            pub.wait_published(RATE)
            mark = bridge.mark()
            setup.tansu.pause()
            try:
                bridge.wait_for_event("spool.dropped_oldest", timeout=30, since=mark)
                pub.wait_published(pub.published + 3 * RATE)
            finally:
                setup.tansu.resume()
            pub.wait_published(pub.published + 2 * RATE)
            sent = pub.stop()
        bridge.wait_for_event("spool.drained", timeout=60, since=mark)
        assert bridge.stop() == 0, bridge.output_tail()
    finally:
        bridge.kill()
    dropped = sum(event["records"] for event in bridge.events("spool.dropped_oldest"))
    # The bridge has stopped and flushed: a short read finds all there is.
    clean = tally(setup.tansu.bootstrap, setup.clean, sent, timeout=3)
    raw = tally(setup.tansu.bootstrap, setup.raw, sent, seq_of=raw_seq, timeout=3)
    lost = len(clean.missing) + len(raw.missing)
    line = (
        f"{clean.line('spool full, drop_oldest')} raw_missing={len(raw.missing)} "
        f"records_lost={lost} records_logged_dropped={dropped}"
    )
    report(request, line)
    assert lost > 0, line
    assert lost <= dropped, line


def leave_in_spool(setup: BridgeSetup, config: Path, count: int) -> None:
    """Messages 0..count-1, all acknowledged from the spool while Kafka is
    frozen, then the daemon killed: they wait in the spool for the next run."""
    bridge = start(config)
    messages = [(sequence_topic(n), sequence_payload(n), 1) for n in range(count)]
    try:
        with setup.tansu.frozen():
            publish_many(setup.mosquitto.url, messages)
            bridge.wait_for_event("spool.active", timeout=20)
            wait_until(
                lambda: daemon_metric(setup.listen_port, ACKED) >= count,
                30,
                f"the bridge to acknowledge all {count} messages from the spool",
            )
            bridge.kill()
    finally:
        bridge.kill()


def tear_tail(spool_dir: Path, damage: str) -> int:
    """Damage the end of the newest segment as a crash or power loss would, and
    return how many whole records it holds.  ``half_frame``: the first half of
    the next record's frame (killed mid-write).  ``zeros``: a block of zero
    bytes (the file grew but its new blocks never reached the disk)."""
    newest = max(spool_dir.glob("*.seg"))
    data = newest.read_bytes()
    first_seq = int(newest.name.removesuffix(".seg"))
    decoded = decode_frames(data[HEADER_SIZE:], first_seq)
    assert decoded.stop is Stop.END, f"{newest} is damaged already: {decoded.stop}"
    count = len(decoded.entries)
    assert count, f"{newest} holds no record"
    if damage == "half_frame":
        record = decoded.entries[-1].record
        frame = encode_frame(first_seq + count, record)
        tail = frame[: len(frame) // 2]
    else:
        tail = bytes(4096)
    with newest.open("ab") as segment:
        segment.write(tail)
    return count


@pytest.mark.parametrize("damage", ["half_frame", "zeros"])
def test_torn_tail_record_in_the_spool(
    setup: BridgeSetup, damage: str, request: pytest.FixtureRequest
) -> None:
    """Kafka frozen, every message acknowledged from the spool, the bridge
    killed, the newest segment's tail torn; the restarted bridge logs the torn
    tail, skips it and delivers every acknowledged message from the spool."""
    config = fault_config(setup)
    spooled = 300
    leave_in_spool(setup, config, spooled)
    whole = tear_tail(setup.workdir / "spool", damage)
    second = start(config)
    try:
        torn = second.wait_for_event("spool.torn_tail")
        assert torn["discarded_bytes"] > 0, torn
        pending = second.wait_for_event("spool.pending_at_start")
        assert pending["records"] == 2 * spooled, (pending, whole)
        with publisher(setup, first=spooled) as pub:  # new traffic while the spool drains
            pub.wait_published(RATE)
            more = pub.stop()
        result = settle(second, setup.tansu.bootstrap, setup.clean, set(range(spooled)) | more)
    finally:
        second.kill()
    delivered(request, result, f"torn spool tail ({damage})")


def test_sigterm_with_kafka_down_and_the_spool_full(
    setup: BridgeSetup, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A graceful stop at the worst moment: Kafka unreachable, the spool full,
    acknowledgements held back, records still in the producer's queue when the
    flush deadline passes (the default delivery timeout outlasts it; the
    deadline is 1 s here, the stop is the same at the default 10 s).  The
    bridge still exits 0; what it could not store stays unacknowledged, so
    mosquitto keeps it, and the next start, with Kafka up, delivers it all."""
    late = Tansu(tmp_path / "late-tansu")
    config = set_kafka(setup.config(TINY_SPOOL, kafka_extra=QUICK_STOP), bootstrap=late.bootstrap)
    first = start(config)
    try:
        with publisher(setup) as pub:
            first.wait_for_event("spool.full", timeout=30)
            assert first.stop(timeout=30) == 0, first.output_tail()
            pub.wait_published(pub.published + RATE)  # mosquitto queues these
            with late:
                second = start(config)
                try:
                    pub.wait_published(pub.published + RATE)
                    sent = pub.stop()
                    result = settle(second, late.bootstrap, setup.clean, sent)
                finally:
                    second.kill()
    finally:
        first.kill()
    delivered(request, result, "sigterm with kafka down and the spool full")
