"""The stream's Kafka state from what librdkafka reports during one batch.

The notes are built by hand, as the worker-thread callbacks would fill them;
no broker is involved because only the order and content of the signals
matter here (the integration test ``test_stream_sources`` runs a real one).
"""

from __future__ import annotations

import msgspec

from bridge.core.settings import KafkaSettings, StreamSettings
from bridge.stream.consumer import KafkaSource, _Stats, _ThreadNotes
from bridge.stream.hub import Hub


def snapshot(**brokers: tuple[str, str]) -> _Stats:
    """A statistics snapshot: broker name -> (state, source)."""
    document = {
        "brokers": {name: {"state": s, "source": src} for name, (s, src) in brokers.items()}
    }
    return msgspec.json.decode(msgspec.json.encode(document), type=_Stats)


UP = snapshot(**{"127.0.0.1:9092/1": ("UP", "learned"), "GroupCoordinator": ("UP", "logical")})
# What librdkafka reports once the broker is gone: the learned entry is
# forgotten, the bootstrap entry idles and the coordinator handle retries.
GONE = snapshot(
    **{"127.0.0.1:9092/bootstrap": ("INIT", "configured"), "GroupCoordinator": ("UP", "logical")}
)


def source_in_state_ok() -> KafkaSource:
    source = KafkaSource(
        KafkaSettings(bootstrap="127.0.0.1:9"), StreamSettings(topics=["t"]), Hub(max_per_tenant=1)
    )
    source._apply(_ThreadNotes(assigned=[("t", 0, 0)], any_assignment=True))
    assert source.state == "ok"
    return source


def test_all_brokers_down_after_a_stale_snapshot_wins() -> None:
    source = source_in_state_ok()
    source._apply(_ThreadNotes(broker_signals=[UP, None]))
    assert source.state == "down"


def test_a_snapshot_after_the_event_is_the_newer_truth() -> None:
    source = source_in_state_ok()
    source._apply(_ThreadNotes(broker_signals=[None, UP]))
    assert source.state == "ok"


def test_only_real_brokers_count() -> None:
    source = source_in_state_ok()
    source._apply(_ThreadNotes(broker_signals=[GONE]))
    assert source.state == "down"
    source._apply(_ThreadNotes(broker_signals=[UP]))
    assert source.state == "ok"
