"""The systems under test, each started against a given mosquitto and Tansu:
the bridge daemon (one instance, or several sharing one MQTT subscription) and
the naive baseline, and the plain paho subscriber every run is compared to
(bench/paho_sink.py).  Each is a context manager that yields once it is
subscribed, and exposes the pids the bench samples for CPU and memory.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
import sys
import tomllib
import urllib.request
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from signal import SIGTERM
from types import TracebackType

from bench.paho_sink import run_sink
from bench.stream_fanout import SECRET as STREAM_SECRET
from tests.support import BridgeProcess, Mosquitto, Tansu, free_port, write_config

BENCH_DIR = Path(__file__).resolve().parent
#: A Kafka record of the bench's load: 200-byte payload (raw) or a clean
#: record, with key and 4-5 headers.
RECORD_BYTES = 320
_BUCKET = re.compile(
    r'^edge_bridge_kafka_delivery_seconds_bucket\{le="(?P<le>[^"]+)"\} (?P<count>\S+)$', re.M
)


@dataclass(frozen=True)
class Topics:
    """The Kafka topics of one measurement (fresh per phase)."""

    clean: str
    raw: str
    dlq: str


Settings = dict[str, dict[str, object]]


def _value(value: object) -> str:
    """A TOML value.  Text, numbers and booleans are written the same in JSON
    and TOML; tables and arrays are spelled out."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value)


def _toml(sections: Settings) -> str:
    """Render ``{table: {key: value}}``; "" is the root table."""
    lines = [f"{k} = {_value(v)}" for k, v in sections.get("", {}).items()]
    for table, values in sections.items():
        if table:
            lines.append(f"[{table}]")
            lines += [f"{k} = {_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def bridge_config(
    workdir: Path,
    mosquitto: Mosquitto,
    tansu: Tansu,
    topics: Topics,
    *,
    qos: int,
    client_id: str,
    shared_group: str | None = None,
    overrides: Settings | None = None,
    sparkplug: bool = False,
) -> Path:
    """A daemon config for the bench: the default telemetry mapping and the
    default settings, with this phase's brokers and topics; ``overrides`` sets
    any other key (``{"kafka": {"linger_ms": 1}}``, or the mapping's
    ``{"mappings.kafka": {"clean_enabled": False}}``)."""
    sections: Settings = {
        "": {"listen": f"127.0.0.1:{free_port()}", "alarms_topic": f"{topics.clean}.alarms"},
        "mqtt": {"url": mosquitto.url, "client_id": client_id, "embedded": "never"},
        "kafka": {"bootstrap": tansu.bootstrap},
        "stream": {"topics": [topics.clean]},
        "spool": {"path": str(workdir / f"spool-{client_id}")},
        "auth": {"jwt_secret": STREAM_SECRET},  # no "no key" warning; clients could connect
    }
    mapping: Settings = {
        "mappings.mqtt": {"qos": qos},
        "mappings.kafka": {
            "clean_topic": topics.clean,
            "raw_topic": topics.raw,
            "dead_letter_topic": topics.dlq,
        },
    }
    for table, values in (overrides or {}).items():
        # "mappings.kafka" and the like belong to the one mapping.
        target = mapping if table.startswith("mappings.") else sections
        target.setdefault(table, {}).update(values)
    if shared_group:
        mapping["mappings.mqtt"]["shared_group"] = shared_group
    if sparkplug:  # mappings/sparkplug.toml's defaults
        mapping["mappings.mqtt"]["topic"] = "spBv1.0/#"
        mapping["mappings.payload"] = {"format": "sparkplug_b"}
    text = _toml(sections) + '[[mappings]]\nname = "telemetry"\n' + _toml(mapping)
    return write_config(workdir, text, name=f"{client_id}.toml")


class Bridges:
    """``count`` bridge daemons; with more than one they share the subscription
    through an MQTT 5 shared group."""

    def __init__(
        self,
        workdir: Path,
        mosquitto: Mosquitto,
        tansu: Tansu,
        topics: Topics,
        qos: int,
        count: int = 1,
        overrides: Settings | None = None,
        sparkplug: bool = False,
    ) -> None:
        self.configs = [
            bridge_config(
                workdir,
                mosquitto,
                tansu,
                topics,
                qos=qos,
                client_id=f"bench-bridge-{i}",
                shared_group="bench" if count > 1 else None,
                overrides=overrides,
                sparkplug=sparkplug,
            )
            for i in range(count)
        ]
        self.processes: list[BridgeProcess] = []
        # Imported here, not at the top: the load and probe processes import
        # this module when they start (spawn), and must start quickly.
        from bridge.config_loader import load_config
        from bridge.ops.memory_budget import MIB, memory_budget

        #: Each daemon's worst-case memory computed from its settings, MiB
        #: (bridge/ops/memory_budget.py), printed beside the measured peak.
        self.worst_case_mib = sum(
            memory_budget(
                load_config(path).config,
                record_bytes=RECORD_BYTES,
                records_per_message=11 if sparkplug else 3,  # a DDATA's 10 metrics and raw
            ).total
            / MIB
            for path in self.configs
        )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def __enter__(self) -> Bridges:
        # All started before any is waited for, and all signalled before any
        # stop is waited for: a daemon's start and stop take seconds each.
        self.processes = [BridgeProcess(config) for config in self.configs]
        try:
            for process in self.processes:
                process.wait_for_event("bridge.ready", timeout=30)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        running = [p for p in self.processes if p.returncode is None]
        for process in running:
            process.send_signal(SIGTERM)
        for process in running:
            process.wait()

    def delivery_histogram(self) -> dict[str, float]:
        """The daemons' histogram of MQTT receive -> every record acknowledged
        by Kafka (``edge_bridge_kafka_delivery_seconds``), summed: upper
        bound in seconds -> count so far."""
        total: dict[str, float] = {}
        for config in self.configs:
            listen = tomllib.loads(config.read_text())["listen"]
            try:
                with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as response:
                    text = response.read().decode()
            except OSError:  # the daemon is gone: its log and the counts say why
                return {}
            for match in _BUCKET.finditer(text):
                total[match["le"]] = total.get(match["le"], 0.0) + float(match["count"])
        return total

    def warnings(self) -> list[str]:
        """The distinct warning and error events the daemons logged."""
        names = {
            f"{line.event['event']} {line.event.get('reason', '')}".strip()
            for p in self.processes
            for line in p.lines
            if line.event is not None and line.event.get("level") in ("warning", "error")
        }
        return sorted(names)

    def summaries(self) -> list[str]:
        """What each daemon said when it stopped (received, acked, in flight,
        and the records Kafka confirmed per topic)."""
        return [
            " ".join(f"{k}={event.get(k)}" for k in ("received", "acked", "in_flight", "produced"))
            for event in self.stopped_events()
        ]

    def stopped_events(self) -> list[dict[str, object]]:
        """Each daemon's ``bridge.stopped`` summary (after exit)."""
        return [event for p in self.processes for event in p.events("bridge.stopped")]


class _SilentSystem:
    """A system under test that keeps no log, histogram or summary of its own
    for the bench to read (the naive baseline, the paho reference)."""

    def warnings(self) -> list[str]:
        return []

    def delivery_histogram(self) -> dict[str, float]:
        return {}

    def summaries(self) -> list[str]:
        return []


class Naive(_SilentSystem):
    """bench/naive_bridge.py as a child process."""

    def __init__(
        self, workdir: Path, mosquitto: Mosquitto, tansu: Tansu, topics: Topics, qos: int
    ) -> None:
        self.log_path = workdir / "naive.log"
        self.argv = [
            sys.executable,
            str(BENCH_DIR / "naive_bridge.py"),
            f"--mqtt-port={mosquitto.port}",
            f"--bootstrap={tansu.bootstrap}",
            f"--clean-topic={topics.clean}",
            f"--raw-topic={topics.raw}",
            f"--dlq-topic={topics.dlq}",
            f"--qos={qos}",
        ]
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pids(self) -> list[int]:
        assert self._proc is not None
        return [self._proc.pid]

    def __enter__(self) -> Naive:
        workdir = self.log_path.parent
        workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline().strip()  # one line, or EOF if it died
        if ready != "ready":
            self._proc.kill()
            raise RuntimeError(f"naive bridge did not start: {self.log_path.read_text()}")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class PahoSink(_SilentSystem):
    """bench/paho_sink.py as a child process; it counts what it receives into
    ``received`` (the value the closed-loop publishers read)."""

    def __init__(self, mosquitto: Mosquitto, qos: int, received: Synchronized[int]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ready = ctx.Event()
        self._proc = ctx.Process(
            target=run_sink,
            args=(mosquitto.host, mosquitto.port, qos, received, self._ready),
            daemon=True,
        )

    @property
    def pids(self) -> list[int]:
        return [self._proc.pid] if self._proc.pid is not None else []

    def __enter__(self) -> PahoSink:
        self._proc.start()
        if not self._ready.wait(30):
            self._proc.kill()
            raise RuntimeError("paho sink did not subscribe within 30 s")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._proc.terminate()
        self._proc.join(20)
