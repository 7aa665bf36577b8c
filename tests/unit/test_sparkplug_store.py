"""The Sparkplug state file: written atomically, read back, an unreadable or
missing file starts empty; and where the state directory is."""

from __future__ import annotations

from pathlib import Path

import structlog

from bridge.core.mqtt_codec import InboundMessage
from bridge.core.normalize import Normalizer
from bridge.core.settings import Config, KafkaSettings, SpoolSettings
from bridge.core.sparkplug import decode_payload, parse_topic
from bridge.core.sparkplug_state import SparkplugState
from bridge.ingest.pipeline import Ingest
from bridge.ingest.sparkplug_store import FILE_NAME, StateSaver, load_state
from bridge.ingest.stats import IngestStats
from bridge.io.files import state_dir
from bridge.io.kafka_producer import KafkaProducer
from tests.support import sparkplug_encoder as enc
from tests.unit.core_fixtures import MAPPINGS, plan_from


def born_state() -> SparkplugState:
    state = SparkplugState()
    topic = parse_topic("spBv1.0/g/NBIRTH/n")
    assert not isinstance(topic, str)
    birth = enc.node_birth([enc.metric("t", alias=3, datatype=enc.DOUBLE, value=1.5)])
    state.handle(topic, decode_payload(birth), 0, 256, None)
    return state


async def test_saved_state_loads_back(tmp_path: Path) -> None:
    state = born_state()
    saver = StateSaver(state, str(tmp_path / "state"))
    await saver.save()
    assert not state.dirty
    assert not list((tmp_path / "state").glob("*.tmp"))
    assert load_state(str(tmp_path / "state")).describe() == state.describe()


def test_a_missing_or_unreadable_file_starts_empty(tmp_path: Path) -> None:
    assert load_state(str(tmp_path)).nodes == {}
    (tmp_path / FILE_NAME).write_bytes(b"{not json")
    assert load_state(str(tmp_path)).nodes == {}


async def test_a_failed_save_keeps_the_state_dirty(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    state = born_state()
    await StateSaver(state, str(tmp_path / "file" / "below")).save()
    assert state.dirty


def test_the_state_directory_is_set_or_beside_the_spool(tmp_path: Path) -> None:
    assert state_dir(Config(state_dir=str(tmp_path)), {}) == str(tmp_path)
    spool = SpoolSettings(path=str(tmp_path / "spool"))
    assert state_dir(Config(spool=spool), {}) == str(tmp_path)
    assert state_dir(Config(), {"STATE_DIRECTORY": "/var/lib/x"}) == "/var/lib/x"


class RefusingMqtt:
    """The ingest's view of the MQTT client, refusing every publish (a broken
    session): a rebirth that cannot go out must not end the batch."""

    connected = True

    def __init__(self) -> None:
        self.tried: list[str] = []

    def publish(self, topic: str, payload: bytes, *, qos: int) -> None:
        self.tried.append(topic)
        raise ValueError("no session")

    def ack(self, generation: int, mid: int) -> None:
        pass

    def flush_writes(self) -> None:
        pass


def test_ingest_publishes_rebirths_and_has_a_changed_state_saved() -> None:
    normalizer = Normalizer(plan_from(MAPPINGS / "sparkplug.toml"))
    mqtt = RefusingMqtt()
    changed: list[bool] = []
    ingest = Ingest(
        normalizer,
        KafkaProducer(KafkaSettings(bootstrap="127.0.0.1:9")),
        IngestStats(),
        mqtt,
        sparkplug_changed=lambda: changed.append(True),
    )
    birth = enc.node_birth([enc.metric("t", alias=1, datatype=enc.DOUBLE, value=1.0)])
    unknown = enc.payload([enc.metric(alias=9, datatype=enc.DOUBLE, value=1.0)], seq=1)
    batch = [
        InboundMessage("spBv1.0/g/NBIRTH/n", birth, 1, False, 1, None),
        InboundMessage("spBv1.0/g/NDATA/n", unknown, 1, False, 2, None),
    ]
    with structlog.testing.capture_logs() as logs:
        ingest.handle_batch(batch, generation=1)
    assert mqtt.tried == ["spBv1.0/g/NCMD/n"]
    assert changed == [True]
    assert ingest.stats.dead_letters == {"unknown_alias": 1}
    (logged,) = [e for e in logs if e["event"] == "sparkplug.rebirth_requested"]
    assert logged["error"] == "ValueError: no session"
