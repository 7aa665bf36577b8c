"""The scaling projection (bench/shared_scaling.py): which core bound stops a
run first, on this machine with its pinning and on a larger one; the
per-process CPU split and the pinning on live processes; and the report's
same-run ratios."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.ingest import IngestResult
from bench.shared_scaling import (
    GATEWAY,
    LAYOUTS,
    ProcessSplit,
    figures,
    pin,
    project,
    scaling_rows,
    with_references,
)

#: One daemon at 10,000 msgs/s: cores used by each part.
ONE = {
    "sut-0": 0.9,
    "sut-0 gil": 0.7,
    "mosquitto": 0.6,
    "tansu": 0.2,
    "load-0": 0.05,
    "load-1": 0.05,
    "probe": 0.01,
    "machine": 2.0,  # the whole machine, other jobs included: not a part
}
#: Two daemons sharing the same 10,000 msgs/s.
TWO = {
    "sut-0": 0.5,
    "sut-0 gil": 0.4,
    "sut-1": 0.5,
    "sut-1 gil": 0.4,
    "mosquitto": 0.6,
    "tansu": 0.2,
    "load-0": 0.05,
    "load-1": 0.05,
}


def test_on_two_cores_the_sum_of_all_processes_binds_first() -> None:
    got = project(10_000, ONE, 2)
    assert got.rate == pytest.approx(10_000 * 2 / 1.81)
    assert got.limit == "all processes on 2 cores"


def test_on_four_cores_one_daemon_is_held_by_its_gil() -> None:
    got = project(10_000, ONE, 4)
    assert got.rate == pytest.approx(10_000 / 0.7)
    assert got.limit == "sut-0's Python threads (one GIL)"
    # Kafka and the publishers elsewhere change nothing: the GIL binds first.
    assert project(10_000, ONE, 4, families=GATEWAY) == got


def test_two_daemons_on_four_cores_are_held_by_the_single_threaded_broker() -> None:
    got = project(10_000, TWO, 4)
    assert got.rate == pytest.approx(10_000 / 0.6)
    assert got.limit == "mosquitto (one thread)"


def test_without_the_broker_on_the_machine_the_total_binds() -> None:
    got = project(10_000, TWO, 2, families=["sut"])
    assert got.rate == pytest.approx(10_000 * 2 / 1.0)
    assert got.limit == "all processes on 2 cores"


def test_a_pinned_cpu_holds_what_is_pinned_to_it() -> None:
    # Daemon on CPU 1 alone (0.9), everything else on CPU 0 (0.91): CPU 0 binds.
    split = project(10_000, ONE, 2, layout=LAYOUTS["split"])
    assert split.rate == pytest.approx(10_000 / 0.91)
    assert split.limit == "CPU 0 (pinned)"
    # Both daemons on CPU 1: 1.0 core of them.
    assert project(10_000, TWO, 2, layout=LAYOUTS["split"]).limit == "CPU 1 (pinned)"
    # A daemon per CPU, the rest anywhere: the total binds.
    own = project(10_000, TWO, 2, layout=LAYOUTS["own"])
    assert own == project(10_000, TWO, 2)


def test_cores_other_jobs_took_are_taken_from_each_bound() -> None:
    # Half of the machine gone: the daemon's GIL gets half a core.
    got = project(10_000, ONE, 4, others={(): 2.0})
    assert got.rate == pytest.approx(10_000 * 0.5 / 0.7)
    assert got.limit == "sut-0's Python threads (one GIL)"
    # Half of CPU 1 gone, where the daemon is pinned: 0.5 core for its 0.9.
    pinned = project(10_000, ONE, 2, layout=LAYOUTS["split"], others={(1,): 0.5})
    assert pinned.rate == pytest.approx(10_000 * 0.5 / 0.9)
    assert pinned.limit == "CPU 1 (pinned)"


def _burn(seconds: float) -> None:
    """Spend CPU until this thread has used ``seconds`` of it."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        sum(range(10_000))


def test_the_split_counts_a_process_and_its_python_threads() -> None:
    burned, measured = threading.Event(), threading.Event()

    def worker() -> None:
        _burn(0.1)
        burned.set()
        measured.wait(30)  # a thread that has exited is gone from /proc/<pid>/task

    split = ProcessSplit({"sut-0": [os.getpid()]})
    split.start(0.0)
    thread = threading.Thread(target=worker)
    thread.start()
    try:
        _burn(0.1)
        assert burned.wait(30)
        used = split.stop(1.0)  # a span of 1 s: cores used = CPU seconds
    finally:
        measured.set()
        thread.join()
    assert used["sut-0"] >= 0.18
    # Every thread here is Python's (none is librdkafka's).
    assert used["sut-0 gil"] == pytest.approx(used["sut-0"], abs=0.03)
    assert used["machine"] >= used["sut-0"] - 0.03


def test_pinning_sets_every_thread_of_a_process(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    script = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); "
    script += "print('up', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "up"
        pin(LAYOUTS["split"], {"mosquitto": [child.pid]}, cpus)
        tasks = list(Path(f"/proc/{child.pid}/task").iterdir())
        assert len(tasks) == 2
        for task in tasks:
            assert os.sched_getaffinity(int(task.name)) == {cpus[0]}
    finally:
        child.kill()
        child.wait()


def _result(name: str, rate: float, split: dict[str, float], daemons: int = 1) -> IngestResult:
    each = [{"received": 1000.0, "peak_rss_mib": 100.0 + i} for i in range(daemons)]
    return IngestResult(
        name, 1, "closed loop", rate, 1000 * daemons, 1000 * daemons, 0.0, 0.0, {},
        split=split, each=each,
    )  # fmt: skip


def test_the_report_gives_each_run_of_two_daemons_its_same_run_ratios() -> None:
    paho = {"sut-0": 0.8, "sut-0 gil": 0.8, "mosquitto": 0.5, "load-0": 0.1}
    results = {
        "paho-qos1": _result("paho-qos1", 20_000, paho),
        "qos1": _result("qos1", 10_000, ONE),
        "qos1-shared2": _result("qos1-shared2", 12_500, TWO, daemons=2),
    }
    text = "\n".join(scaling_rows(results))
    assert "| qos1-shared2 | 12,500 | 1.25x of qos1 | 0.62x | 80 | 50% / 50% | 100 / 101 |" in text
    assert "PROJECTION" in text
    got = figures(results)
    assert got["qos1-shared2 / qos1"] == pytest.approx(1.25)
    assert got["qos1-shared2 / paho-qos1"] == pytest.approx(0.625)
    assert got["qos1-shared2 on 4 cores (bench), projected msgs/s"] == pytest.approx(12_500 / 0.6)


def test_no_scaling_tables_without_a_run_of_several_daemons() -> None:
    assert scaling_rows({"qos1": _result("qos1", 10_000, ONE)}) == []


def test_a_run_that_delivered_nothing_gives_no_figure() -> None:
    """Other jobs can take the whole machine for a window (a rate of 0 was
    seen): such a run must not pull a median of ratios down to 0."""
    results = {
        "qos1": _result("qos1", 10_000, ONE),
        "qos1-shared2": _result("qos1-shared2", 0, TWO, daemons=2),
    }
    assert not [name for name in figures(results) if name.startswith("qos1-shared2")]
    assert "| qos1-shared2 | 0 | 0.00x of qos1 | - | - |" in "\n".join(scaling_rows(results))


def test_a_scaling_run_brings_its_same_run_references() -> None:
    assert with_references(["qos1-shared2"]) == ["paho-qos1", "qos1", "qos1-shared2"]
    assert with_references(["qos1-shared2-pin-own"]) == [
        "paho-qos1", "qos1", "qos1-shared2", "qos1-shared2-pin-own",
    ]  # fmt: skip
    assert with_references(["qos1-shared2-no-stream", "qos1"]) == [
        "paho-qos1", "qos1-no-stream", "qos1-shared2-no-stream", "qos1",
    ]  # fmt: skip
    assert with_references(["qos0", "naive-qos1"]) == ["qos0", "naive-qos1"]
