"""One ingest measurement: fresh brokers, the system under test, publisher
processes, the Kafka probe, a steady window, then an exactness check.

The rate is taken over the steady window only (after a warm-up), from the
probe's count of records on Kafka.  A closed-loop run lets the publishers keep
at most ``WINDOW`` messages that are not on Kafka yet, so the offered load
follows the system's capacity; a fixed-rate run (the latency measurement)
offers exactly ``rate`` messages/s.  Afterwards every message the broker
accepted must reach Kafka: at QoS 1 anything else is a loss (fewer) or a
duplicate (more), and the result says so.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka.admin import AdminClient, NewTopic

from bench.kafka_probe import count_records, run_probe
from bench.machine import CpuWindow, peak_rss_mib, rss_mib
from bench.mqtt_load import DEVICES, LoadSpec, run_publisher
from bench.shared_scaling import LAYOUTS, ProcessSplit, pin, roles
from bench.systems import Bridges, Naive, PahoSink, Settings, Topics
from tests.support import Mosquitto, Tansu

PUBLISHERS = 2
#: Messages published but not yet on Kafka, at most, in a closed-loop run.
WINDOW = 30_000
#: Seconds of traffic a fixed-rate run may have outstanding before it stalls
#: (a system that cannot keep up then shows a lower achieved rate).
FIXED_RATE_BACKLOG_S = 5
#: How long the load may take to deliver its first message (processes spawned,
#: connections made) before the warm-up starts anyway.
FIRST_DELIVERY_TIMEOUT_S = 60

_spawn = multiprocessing.get_context("spawn")

#: What mosquitto logs when it drops messages it accepted, because a client's
#: queue is full by its count (docs/benchmarks.md, fifth pass).
BROKER_DROPS = "Outgoing messages are being dropped for client "


class System(Protocol):
    """A system under test: a context manager that yields once subscribed."""

    @property
    def pids(self) -> list[int]: ...

    def warnings(self) -> list[str]: ...

    def summaries(self) -> list[str]: ...

    def delivery_histogram(self) -> dict[str, float]: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class Phase:
    """What one measurement runs."""

    system: str  # "bridge", "naive" or "paho" (the reference: receive and count)
    qos: int
    rate: float = 0.0  # messages/s; 0 = closed loop
    latency: bool = False
    instances: int = 1  # bridges sharing one subscription
    settings: Settings = field(default_factory=dict)  # bridge config beyond the defaults
    sparkplug: bool = False  # Sparkplug B DDATA (10 aliased metrics) instead of JSON
    pinning: str = ""  # a core layout of bench/shared_scaling.py LAYOUTS; "" = unpinned

    def start(
        self,
        workdir: Path,
        mosquitto: Mosquitto,
        tansu: Tansu,
        topics: Topics,
        overrides: Settings,
        delivered: Synchronized[int],
    ) -> System:
        if self.system == "paho":
            return PahoSink(mosquitto, self.qos, delivered)
        if self.system == "naive":
            return Naive(workdir, mosquitto, tansu, topics, self.qos)
        settings = {table: dict(values) for table, values in self.settings.items()}
        for table, values in overrides.items():
            settings.setdefault(table, {}).update(values)
        return Bridges(
            workdir, mosquitto, tansu, topics, self.qos, self.instances, settings, self.sparkplug
        )


@dataclass
class Timing:
    duration: float  # the steady window, s
    warmup: float


@dataclass
class IngestResult:
    """One ingest measurement."""

    name: str
    qos: int
    offered: str
    # messages/s whose raw record reached Kafka over the steady window (the
    # paho reference: messages it received)
    rate: float
    published: int  # messages the broker accepted (acknowledged, at QoS 1)
    on_kafka: int  # messages on Kafka when the run ended
    rss_mib: float  # at the end of the steady window
    peak_rss_mib: float
    cpu: dict[str, float]  # cores used per process during the steady window
    latency_ms: dict[str, float] = field(default_factory=dict)  # -> record timestamp
    # The bridge's own histogram over the window: MQTT receive -> Kafka ack.
    ack_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # events logged at warning or above
    summaries: list[str] = field(default_factory=list)  # each daemon's own count at exit
    # The daemons' worst-case memory from their settings (bridge/ops/memory_budget.py)
    worst_case_mib: float = 0.0
    # Cores per process over the window, the daemons' Python threads apart
    # (bench/shared_scaling.py ProcessSplit); each daemon's messages and peak RSS.
    split: dict[str, float] = field(default_factory=dict)
    each: list[dict[str, float]] = field(default_factory=list)
    pinning: str = ""
    # Offsets the read-back passed over (bench/kafka_probe.py Readback).
    kafka_skipped: int = 0

    @property
    def exact(self) -> str:
        if self.qos == 0:
            return f"{self.on_kafka}/{self.published} (QoS 0 may drop)"
        if self.on_kafka == self.published:
            return "exact"
        where = (
            f"{self.kafka_skipped} offsets skipped in the topic"
            if self.kafka_skipped
            else "the topic's offsets contiguous"
        )
        return f"MISMATCH {self.on_kafka} on Kafka of {self.published} ({where})"


def broker_drops(log_text: str) -> list[str]:
    """mosquitto's word that it dropped messages for a client, from its log: a
    shortfall on Kafka with one of these was lost in the broker, before the
    system under test could see it."""
    return [
        f"mosquitto dropped messages for {line.split(BROKER_DROPS, 1)[1].rstrip('.')}"
        for line in log_text.splitlines()
        if BROKER_DROPS in line
    ]


def bucket_quantiles(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """From two readings of a cumulative histogram (bound -> count): for p50,
    p95 and p99, the bucket bound in ms below which that share fell, and the
    share within 25 ms."""
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    if total <= 0:
        return {}
    bounds = sorted((float(b), after[b] - before.get(b, 0.0)) for b in after if b != "+Inf")
    out: dict[str, float] = {}
    for name, share in (("p50_le", 0.5), ("p95_le", 0.95), ("p99_le", 0.99)):
        out[name] = next((b * 1000 for b, n in bounds if n >= share * total), float("inf"))
    out["within_25ms"] = round(next((n for b, n in bounds if b == 0.025), 0.0) / total, 4)
    out["samples"] = total
    return out


def percentiles(raw: bytes) -> dict[str, float]:
    """p50/p95/p99/max in ms of an array of nanoseconds."""
    values = sorted(array("q", raw))
    if not values:
        return {}

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] / 1e6, 2)

    return {
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": pick(1.0),
        "samples": float(len(values)),
    }


@contextmanager
def brokers(workdir: Path) -> Iterator[tuple[Mosquitto, Tansu]]:
    """A fresh mosquitto (broker_config/mosquitto-test.conf) and Tansu."""
    with Mosquitto(workdir / "mosquitto") as mosquitto, Tansu(workdir / "tansu") as tansu:
        yield mosquitto, tansu


def create_topics(tansu: Tansu, topics: Topics, partitions: int = 4) -> None:
    """Create the phase's topics up front, as they exist in production, so that
    no consumer (the stream's, the probe) starts by waiting for them."""
    admin = AdminClient({"bootstrap.servers": tansu.bootstrap})
    names = [topics.clean, topics.raw, topics.dlq, f"{topics.clean}.alarms"]
    for future in admin.create_topics([NewTopic(n, partitions) for n in names]).values():
        future.result(20)


def measure_ingest(
    name: str,
    phase: Phase,
    timing: Timing,
    workdir: Path,
    overrides: Settings | None = None,
    profile: Path | None = None,
) -> IngestResult:
    """Start brokers and the system, drive load, count on Kafka, stop everything.
    With ``profile``, py-spy samples the first system process during the
    steady window and writes collapsed stacks there."""
    workdir.mkdir(parents=True)
    topics = Topics(f"clean.{name}", f"raw.{name}", f"dlq.{name}")
    ctx = _spawn
    delivered = ctx.Value("q", 0, lock=False)
    stop_load = ctx.Value("q", 0, lock=False)
    stop_probe = ctx.Value("q", 0, lock=False)
    latency_from = ctx.Value("q", 0, lock=False)
    with ExitStack() as stack:
        mosquitto, tansu = stack.enter_context(brokers(workdir))
        create_topics(tansu, topics)
        sut = stack.enter_context(
            phase.start(workdir, mosquitto, tansu, topics, overrides or {}, delivered)
        )
        # The paho reference counts what it receives itself; every other
        # system is counted on Kafka by the probe.
        counted_on_kafka = phase.system != "paho"
        results_in, results_out = ctx.Pipe(duplex=False)
        probe = ctx.Process(
            target=run_probe,
            args=(tansu.bootstrap, topics.raw, delivered, stop_probe, latency_from),
            kwargs={"results": results_out, "watch_latency": phase.latency},
            daemon=True,
        )
        if counted_on_kafka:
            probe.start()
            stack.callback(probe.kill)
        window = int(phase.rate * FIXED_RATE_BACKLOG_S) if phase.rate else WINDOW
        if phase.sparkplug:
            # The same records in flight as JSON's window: a DDATA makes 11, not 3.
            window = window * 3 // 11
        published = [ctx.Value("q", 0, lock=False) for _ in range(PUBLISHERS)]
        publishers = []
        for i in range(PUBLISHERS):
            spec = LoadSpec(
                host=mosquitto.host,
                port=mosquitto.port,
                client_id=f"bench-load-{i}",
                qos=phase.qos,
                devices=tuple(range(i, DEVICES, PUBLISHERS)),
                rate=phase.rate / PUBLISHERS,
                window=window // PUBLISHERS,
                share=1 / PUBLISHERS,
                sparkplug=phase.sparkplug,
            )
            process = ctx.Process(
                target=run_publisher, args=(spec, delivered, published[i], stop_load), daemon=True
            )
            process.start()
            stack.callback(process.kill)
            publishers.append(process)

        cpu = CpuWindow(
            {
                "system": sut.pids,
                "mosquitto": [mosquitto.pid],
                "tansu": [tansu.pid],
                "load": [p.pid for p in publishers if p.pid is not None],
                "probe": [probe.pid] if counted_on_kafka and probe.pid is not None else [],
            }
        )
        split = ProcessSplit(
            roles(
                sut.pids, mosquitto.pid, tansu.pid, [p.pid for p in publishers if p.pid],
                [probe.pid] if counted_on_kafka and probe.pid is not None else [],
            )
        )  # fmt: skip
        if phase.pinning:
            pin(LAYOUTS[phase.pinning], split.named, sorted(os.sched_getaffinity(0)))
        # The warm-up counts from the first delivery: the publisher processes
        # take seconds to start on a busy machine, which is not warm-up.
        _wait_for_count(delivered, 1, timeout=FIRST_DELIVERY_TIMEOUT_S)
        time.sleep(timing.warmup)  # the windows are wall-clock time: nothing to wait on
        t0, d0 = time.monotonic(), delivered.value
        cpu.start(t0)
        split.start(t0)
        if phase.latency:
            latency_from.value = time.time_ns()
        spy = _py_spy(sut.pids[0], timing.duration, profile) if profile else None
        acks_before = sut.delivery_histogram()
        time.sleep(timing.duration)
        t1, d1 = time.monotonic(), delivered.value
        # CPU first: what the histogram's HTTP requests take is not the window's.
        cores = cpu.stop(t1)
        per_process = split.stop(t1)
        acks_after = sut.delivery_histogram()
        latency_from.value = 0
        rss_now = sum(rss_mib(pid) for pid in sut.pids)

        if spy is not None:
            spy.wait(30)
        stop_load.value = 1
        for process in publishers:
            process.join(60)
        total = sum(v.value for v in published)
        peaks = [peak_rss_mib(pid) for pid in sut.pids]
        if counted_on_kafka:
            stop_probe.value = 1
            to_timestamp = results_in.recv() if results_in.poll(30) else b""
            probe.join(10)
            # Everything the broker accepted should reach Kafka: read it back (waiting
            # up to a minute for the last records); a shortfall is reported, not raised.
            on_kafka, skipped = count_records(tansu.bootstrap, topics.raw, total, timeout=60)
        else:
            to_timestamp = b""
            on_kafka, skipped = _wait_for_count(delivered, total, timeout=60), 0
        stack.close()  # stop the system before reading its warnings: shutdown logs too
        return IngestResult(
            name=name,
            qos=phase.qos,
            offered=f"{phase.rate:.0f}/s" if phase.rate else "closed loop",
            rate=round((d1 - d0) / (t1 - t0)),
            published=total,
            on_kafka=on_kafka,
            rss_mib=round(rss_now, 1),
            peak_rss_mib=round(sum(peaks), 1),
            cpu=cores,
            latency_ms=percentiles(to_timestamp),
            ack_ms=bucket_quantiles(acks_before, acks_after),
            warnings=sut.warnings() + broker_drops(mosquitto.log_text()),
            summaries=sut.summaries(),
            worst_case_mib=round(getattr(sut, "worst_case_mib", 0.0), 1),
            split=per_process,
            each=_each(sut, peaks, topics.raw),
            pinning=phase.pinning,
            kafka_skipped=skipped,
        )


def _each(sut: System, peaks: list[float], raw_topic: str) -> list[dict[str, float]]:
    """Per process of the system: its peak RSS and, for daemons, the messages
    it received (its own count at exit: how a shared subscription split) and
    the raw records Kafka confirmed to it (a delivery report each)."""
    out = [{"peak_rss_mib": round(peak, 1)} for peak in peaks]
    if isinstance(sut, Bridges):
        for entry, event in zip(out, sut.stopped_events(), strict=False):
            entry["received"] = float(str(event.get("received", 0)))
            produced = event.get("produced")
            if isinstance(produced, dict):
                entry["raw_confirmed"] = float(produced.get(raw_topic, 0))
    return out


def _wait_for_count(counter: Synchronized[int], want: int, timeout: float) -> int:
    """The counter once it reaches ``want``, or what it holds after ``timeout``."""
    deadline = time.monotonic() + timeout
    while counter.value < want and time.monotonic() < deadline:
        time.sleep(0.05)
    return counter.value


def _py_spy(pid: int, duration: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) recording ``pid`` as collapsed stacks."""
    argv = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(duration)))]
    argv += ["--rate", "100", "--format", "raw", "--threads", "--output", str(out)]
    executable = Path(sys.executable).with_name("py-spy")
    if executable.exists():
        argv[0] = str(executable)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
