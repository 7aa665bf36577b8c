"""The Sparkplug state file: written atomically, read back, an unreadable or
missing file starts empty; and where the state directory is."""

from __future__ import annotations

from pathlib import Path

from bridge.config import Config, SpoolSettings
from bridge.core.sparkplug import decode_payload, parse_topic
from bridge.core.sparkplug_state import SparkplugState
from bridge.daemon import state_dir
from bridge.sparkplug_store import FILE_NAME, StateSaver, load_state
from tests.support import sparkplug_encoder as enc


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
