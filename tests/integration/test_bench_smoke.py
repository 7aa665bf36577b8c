"""The benchmark runs: a few seconds of bench/run.py, the way a user starts it,
through the bridge and through the naive baseline.  This proves the scripts
work (brokers, publishers, probe, table), not how fast anything is."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_bench_prints_a_table_with_messages_counted_on_kafka(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    bench = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "run.py"),
            "--duration=1",
            "--warmup=0.5",
            "--only=qos1,naive-qos1,paho-qos1,qos1-shared2",
            f"--json={out}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,  # from anywhere, not only the repository root
        start_new_session=True,  # its brokers and bridges go with it on a timeout
    )
    try:
        stdout, stderr = bench.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)
        stdout, stderr = bench.communicate()
        raise AssertionError(f"bench/run.py did not finish in 150 s\n{stdout[-3000:]}") from None
    run = subprocess.CompletedProcess(bench.args, bench.returncode, stdout, stderr)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    row = re.search(
        r"^\| MQTT->Kafka QoS 1, msgs/s on Kafka \| ([\d,]+) \| ([\d,]+) \|", run.stdout, re.M
    )
    assert row is not None, run.stdout
    bridge_rate, naive_rate = (int(cell.replace(",", "")) for cell in row.groups())
    assert bridge_rate > 0
    assert naive_rate > 0

    # The same-run reference: its row and the bridge's ratio to it are printed.
    assert re.search(r"^\| reference: plain paho QoS 1 subscriber .*\| [\d,]+ \|", run.stdout, re.M)
    assert re.search(
        r"^\| QoS 1 msgs/s as a ratio to the paho reference, same run \| "
        r"(\d+\.\d\dx|-) \|",
        run.stdout,
        re.M,
    ), run.stdout
    # What the target means on this machine, from the same runs' CPU split.
    budget = re.search(
        r"^\| bridge core-µs per message the target leaves .*\| qos1 (-?\d+\.\d) / (\d+\.\d) "
        r"\(for 1\.2x\) \|",
        run.stdout,
        re.M,
    )
    assert budget is not None, run.stdout
    assert float(budget.group(2)) > 0  # what the bridge spent
    assert re.search(r"^\| ceiling here: .*\| qos1 \d+\.\d\dx \|", run.stdout, re.M)

    # Two daemons on one shared subscription: their row with the same-run
    # ratios to one daemon and to the reference (a rate may be 0 on a machine
    # this busy, so the counts below are what is checked).
    assert re.search(
        r"^\| qos1-shared2 \| [\d,]+ \| (\d+\.\d\dx of qos1|-) \| (\d+\.\d\dx|-) \|",
        run.stdout,
        re.M,
    ), run.stdout
    assert "PROJECTION to 4 cores" in run.stdout

    results = json.loads(out.read_text())["results"]
    shared = results["qos1-shared2"]
    received = [daemon["received"] for daemon in shared["each"]]
    assert len(received) == 2
    assert min(received) > 0, received  # the broker handed each daemon a share
    assert sum(received) == shared["published"], received
    for name in ("qos1", "naive-qos1", "paho-qos1", "qos1-shared2"):
        result = results[name]
        assert result["published"] > 0
        assert result["peak_rss_mib"] > 0
        assert result["cpu"]["system"] > 0
        # QoS 1: every message the broker accepted is on Kafka, exactly once.
        # Except where Tansu confirmed raw records it then did not keep: seen
        # only with two daemons producing to the same partitions at once (about
        # one run in 70, docs/benchmarks.md), the topic's offsets contiguous.
        # The bridge's part is exact even then: Kafka confirmed one raw record
        # per accepted message to the daemons.
        confirmed = [daemon.get("raw_confirmed") for daemon in result["each"]]
        if result["on_kafka"] < result["published"] and None not in confirmed and confirmed:
            assert sum(confirmed) == result["published"], (name, confirmed, result["summaries"])
            assert result["kafka_skipped"] == 0, result["kafka_skipped"]
            continue
        assert result["on_kafka"] == result["published"], (
            f"{name}: {result['on_kafka']} on Kafka of {result['published']} accepted; "
            f"offsets skipped in the topic: {result['kafka_skipped']}; "
            f"daemons at exit: {result['summaries']}; warnings: {result['warnings']}"
        )


def test_the_sparkplug_core_bench_prints_json_beside_sparkplug() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "sparkplug_core.py"), "--rounds=1",
         "--messages=500"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^\| json \| 2 \| [\d,]+ \| [\d,]+ \| [\d,]+ \|$", run.stdout, re.M)
    assert re.search(r"^\| sparkplug \| 10 \| [\d,]+ \| [\d,]+ \| [\d,]+ \|$", run.stdout, re.M)
