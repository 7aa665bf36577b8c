"""``bench/run.py --table-from`` on files it did not write: a refusal that
names the file and what to do, never a traceback; a saved run prints its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.run import main

SAVED = {
    "machine": {"nproc": "2"},
    "results": {
        "paho-qos1": {
            "name": "paho-qos1", "qos": 1, "offered": "closed loop", "rate": 60_000.0,
            "published": 1, "on_kafka": 1, "rss_mib": 1.0, "peak_rss_mib": 1.0, "cpu": {},
            "split": {"sut-0": 1.0, "sut-0 gil": 1.0, "mosquitto": 0.45, "load-0": 0.15},
        },
        "qos1": {
            "name": "qos1", "qos": 1, "offered": "closed loop", "rate": 54_000.0,
            "published": 1, "on_kafka": 1, "rss_mib": 1.0, "peak_rss_mib": 1.0, "cpu": {},
            "split": {"sut-0": 0.9, "sut-0 gil": 0.8, "mosquitto": 0.45, "tansu": 0.3,
                      "load-0": 0.15},
        },
    },
    "stream": {},
}  # fmt: skip
WHOLE = json.dumps(SAVED)


@pytest.mark.parametrize(
    "text",
    [
        "garbage \x00\xff",
        WHOLE[: len(WHOLE) // 2],  # half-written
        "[" * 1000 + "]" * 1000,  # 1,000 levels deep
        json.dumps({**SAVED, "machine": {"nproc": "9" * 300 + "x"}}),  # a 300-digit non-number
        json.dumps({**SAVED, "machine": {"nproc": "9" * 400}}),  # past a float's range
        json.dumps({"machine": {}}),  # another kind of JSON
    ],
)
def test_a_file_that_is_not_a_saved_run_is_refused_by_name(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.json"
    path.write_text(text, errors="surrogateescape")
    with pytest.raises(SystemExit) as ended:
        main(["--table-from", str(path)])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert f"--table-from {path}: not a run saved by this bench's --json" in err
    assert "Traceback" not in err


def test_a_missing_file_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--table-from", str(tmp_path / "absent.json")])
    assert "absent.json: not a run saved" in capsys.readouterr().err


def test_a_300_digit_core_count_still_prints_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**SAVED, "machine": {"nproc": "9" * 300}}))
    assert main(["--table-from", str(path)]) == 0
    # The one-thread processes bound the ceiling however many cores there are.
    assert "| qos1 2.00x |" in capsys.readouterr().out


def test_a_saved_run_prints_its_table_with_the_ceiling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.json"
    path.write_text(WHOLE)
    assert main(["--table-from", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| qos1 2.00x |" in out
    assert "| qos1 11.1 / 16.7 (for 1.2x) |" in out
