"""Fan-out of the live stream to many WebSocket clients: deliveries per second
and latency.

    .venv/bin/python bench/stream_fanout.py [--clients 100] [--records 3000]
    .venv/bin/python bench/stream_fanout.py --envelope update message   # both, one run

``--envelope``: ``update`` is the built-in endpoint, one ``telemetry.update``
event per clean record; ``message`` a ``[[streams]]`` endpoint with the
per-message envelope, reading raw-topic records (one MQTT message with two
metrics each) through the ingest mapping, each client asking for one metric.

Three processes besides Tansu: the stream server (``run_stream`` alone, as the
daemon runs it), this one (the producer and the clients), and Tansu.  Every
client watches the same tenant, so each record is delivered ``--clients``
times.

1. Capacity: ``--records`` records are produced at once; deliveries/s is the
   number of deliveries over the time from the first to the last.  The
   clients' queues are made large for this phase, so the number is what the
   server can push, not what the slow-client policy lets through.
2. Latency: records paced at shares of that capacity (``--latency-share``,
   10% and 50% by default) for ``--seconds`` each; each record carries the
   producer's wall clock, each client notes its own at arrival (same
   machine, same clock).  On Tansu this includes up to twice the consumer's
   ``fetch.wait.max.ms`` (see ``--fetch-wait-ms``): Tansu answers a fetch
   only when that time is up, even when a record arrived meanwhile, where
   Kafka answers at once.

The clients run in one trio process and decode only the timestamp (msgspec),
so that they cost the server as little CPU as possible on a small machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import jwt  # noqa: E402
import msgspec  # noqa: E402
import trio  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.cimpl import NewTopic  # noqa: E402
from trio_websocket import open_websocket_url  # noqa: E402

from bench.machine import CpuWindow  # noqa: E402
from tests.support import Tansu, free_port, wait_until  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789"


class _Data(msgspec.Struct):
    value: float


class _Envelope(msgspec.Struct):
    data: _Data


class _Metrics(msgspec.Struct):
    temperature: float


class _Message(msgspec.Struct):
    metrics: _Metrics


_decode = msgspec.json.Decoder(_Envelope).decode
_decode_message = msgspec.json.Decoder(_Message).decode
MESSAGE_PATH = "/bench/message"


def _sent_at(message: str) -> float | None:
    """The producer's clock in an event of either envelope, or None."""
    if '"telemetry.update"' in message:
        return _decode(message).data.value
    if '"type":"telemetry"' in message:
        return _decode_message(message).metrics.temperature
    return None


def _raw(value: float, device: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A raw-topic record: one MQTT message's payload and its topic header."""
    payload = {
        "schema_version": 1,
        "device": f"DEV-{device:03d}",
        "metrics": {"temperature": value, "humidity": 40.5},
        "ts": "2026-02-25T14:00:00Z",
    }
    topic = f"tenant/t1/device/DEV-{device:03d}/telemetry"
    return json.dumps(payload).encode(), [("mqtt_topic", topic.encode())]


def _produce_one(producer: Producer, topic: str, envelope: str, value: float, n: int) -> None:
    if envelope == "message":
        payload, headers = _raw(value, n % 100)
        producer.produce(topic, payload, headers=headers)
    else:
        producer.produce(topic, _record(value, n % 100))


def _record(value: float, device: int) -> bytes:
    return json.dumps(
        {
            "tenant": "t1",
            "device_serial_id": f"DEV-{device:03d}",
            "metric": "temperature",
            "metric_type": "numeric",
            "value": value,
            "ts": "2026-02-25T14:00:00Z",
            "received_at": "2026-02-25T14:00:00.050Z",
            "schema_version": 1,
        }
    ).encode()


# --------------------------------------------------------------------------- server process
def serve(args: argparse.Namespace) -> None:
    from bridge.core.plan import compile_config
    from bridge.core.settings import (
        AuthSettings,
        Config,
        KafkaSettings,
        LoadedConfig,
        Mapping,
        StreamEndpoint,
        StreamEnvelope,
        StreamSettings,
        StreamSource,
    )
    from bridge.io.logs import configure
    from bridge.stream.service import run_stream

    configure("json", "warning")
    streams = []
    if args.envelope == ["message"]:
        streams = [
            StreamEndpoint(
                name="bench",
                auth="jwt",
                websocket_path=MESSAGE_PATH,
                max_per_tenant=args.clients + 1,
                source=StreamSource(topics=[args.topic], read="mapping", mapping="telemetry"),
                envelope=StreamEnvelope(kind="message"),
            )
        ]
    config = Config(
        mappings=[Mapping()],
        streams=streams,
        listen=f"127.0.0.1:{args.port}",
        kafka=KafkaSettings(bootstrap=args.bootstrap),
        stream=StreamSettings(
            topics=[args.topic],
            session_timeout_ms=1500,
            max_per_tenant=args.clients + 1,
            client_queue=args.queue,
            max_lag_drops=args.queue,
            consumer_properties=(
                {"fetch.wait.max.ms": str(args.fetch_wait_ms)} if args.fetch_wait_ms else {}
            ),
        ),
        auth=AuthSettings(jwt_secret=SECRET),
    )
    plan = compile_config(LoadedConfig(config, [("bench", 0)]))
    trio.run(partial(run_stream, config, endpoints=plan.streams))


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stream/status", timeout=2) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


# --------------------------------------------------------------------------- clients
class Clients:
    def __init__(self) -> None:
        self.arrivals: list[list[tuple[float, float]]] = []  # per client: (sent, received)
        self.closed = 0

    async def run(self, url: str, count: int, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        connected = 0
        ready = trio.Event()

        async def one(index: int) -> None:
            nonlocal connected
            mine = self.arrivals[index]
            async with open_websocket_url(url, message_queue_size=64) as ws:
                await ws.get_message()  # connected
                connected += 1
                if connected == count:
                    ready.set()
                while True:
                    message = await ws.get_message()
                    now = time.time()
                    sent = _sent_at(message)
                    if sent is not None:
                        mine.append((sent, now))

        self.arrivals = [[] for _ in range(count)]
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(one, index)
            await ready.wait()
            task_status.started()

    def total(self) -> int:
        return sum(len(a) for a in self.arrivals)


def _produce_burst(producer: Producer, topic: str, envelope: str, records: int) -> None:
    now = time.time()
    for n in range(records):
        _produce_one(producer, topic, envelope, now, n)
        if n % 1000 == 999:
            producer.poll(0)
    producer.flush(30)


def _produce_paced(
    producer: Producer, topic: str, envelope: str, rate: float, seconds: float
) -> int:
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            _produce_one(producer, topic, envelope, time.time(), sent)
            sent += 1
        producer.poll(0)
        time.sleep(0.002)
    producer.flush(30)
    return sent


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def measure(
    args: argparse.Namespace, bootstrap: str, port: int, cpu: CpuWindow
) -> dict[str, Any]:
    """Print the capacity and latencies, and return them (bench/run.py's table)."""
    envelope = args.envelope[0]
    result: dict[str, Any] = {"clients": args.clients, "envelope": envelope, "latency": []}
    token = jwt.encode({"exp": time.time() + 3600, "role": "client", "tenant": "t1"}, SECRET)
    url = f"ws://127.0.0.1:{port}/ws/telemetry/stream/?token={token}"
    if envelope == "message":
        url = f"ws://127.0.0.1:{port}{MESSAGE_PATH}?token={token}&metric=temperature"
    clients = Clients()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    async with trio.open_nursery() as nursery:
        await nursery.start(clients.run, url, args.clients)

        expected = args.records * args.clients
        cpu.start(time.monotonic())
        await trio.to_thread.run_sync(_produce_burst, producer, args.topic, envelope, args.records)
        deadline = trio.current_time() + 120
        while clients.total() < expected and trio.current_time() < deadline:
            await trio.sleep(0.05)
        used = cpu.stop(time.monotonic())
        arrivals = [t for per_client in clients.arrivals for _, t in per_client]
        delivered = len(arrivals)
        span = max(arrivals) - min(arrivals)
        capacity = delivered / span
        print(
            f"[{envelope}] capacity: {args.records} records x {args.clients} clients = "
            f"{delivered} of {expected} deliveries in {span:.2f} s: {capacity:,.0f} deliveries/s "
            f"({capacity / args.clients:,.0f} records/s); CPU in cores {used}"
        )
        result |= {"deliveries_per_s": round(capacity), "delivered": delivered, "cpu": used}

        for share in args.latency_share:
            for per_client in clients.arrivals:
                per_client.clear()
            rate = max(1.0, capacity * share / args.clients)
            cpu.start(time.monotonic())
            sent = await trio.to_thread.run_sync(
                _produce_paced, producer, args.topic, envelope, rate, args.seconds
            )
            used = cpu.stop(time.monotonic())
            deadline = trio.current_time() + 30
            while clients.total() < sent * args.clients and trio.current_time() < deadline:
                await trio.sleep(0.05)
            latencies = [(r - s) * 1000 for per_client in clients.arrivals for s, r in per_client]
            print(
                f"latency at {share:.0%} of capacity, {rate:,.0f} records/s "
                f"({rate * args.clients:,.0f} deliveries/s) for {args.seconds:g} s: "
                f"{len(latencies)} of {sent * args.clients} delivered, "
                f"p50 {_percentile(latencies, 0.5):.1f} ms, "
                f"p99 {_percentile(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms; "
                f"CPU in cores {used}"
            )
            result["latency"].append(
                {
                    "share": share,
                    "deliveries_per_s": round(rate * args.clients),
                    "delivered": len(latencies),
                    "expected": sent * args.clients,
                    "p50": round(_percentile(latencies, 0.5), 1),
                    "p99": round(_percentile(latencies, 0.99), 1),
                    "max": round(max(latencies), 1),
                    "cpu": used,
                }
            )
        status = await trio.to_thread.run_sync(_status, port)
        print(
            f"server: events dropped {status['events_dropped']}, "
            f"slow disconnects {status['slow_disconnects']}"
        )
        result |= {k: status[k] for k in ("events_dropped", "slow_disconnects")}
        nursery.cancel_scope.cancel()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="measure", choices=["measure", "serve"])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument(
        "--envelope",
        nargs="+",
        default=["update"],
        choices=["update", "message"],
        help="the envelope(s) to measure, one after the other in this run",
    )
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--latency-share",
        type=float,
        nargs="+",
        default=[0.1, 0.5],
        help="paced rates for the latency phases, as shares of the measured capacity",
    )
    parser.add_argument("--queue", type=int, default=100_000)
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        help="the consumer's fetch.wait.max.ms; Tansu holds an empty fetch that long "
        "even when a record arrives, which adds up to twice this to the latency",
    )
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="bench.stream")
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.mode == "serve":
        serve(args)
        return
    for envelope in args.envelope:
        run_fanout(argparse.Namespace(**{**vars(args), "envelope": [envelope]}))


def run_fanout(args: argparse.Namespace) -> dict[str, Any]:
    """Tansu, the stream server and the clients for one measurement."""
    with tempfile.TemporaryDirectory() as workdir, Tansu(Path(workdir)) as tansu:
        admin = AdminClient({"bootstrap.servers": tansu.bootstrap})
        for future in admin.create_topics([NewTopic(args.topic, 4)]).values():
            future.result(20)
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "serve",
                "--bootstrap",
                tansu.bootstrap,
                "--topic",
                args.topic,
                "--port",
                str(port),
                "--clients",
                str(args.clients),
                "--queue",
                str(args.queue),
                "--envelope",
                args.envelope[0],
                *(["--fetch-wait-ms", str(args.fetch_wait_ms)] if args.fetch_wait_ms else []),
            ]
        )
        try:

            def ready() -> bool:
                try:
                    return _status(port)["kafka_state"] == "ok"
                except OSError:
                    return False

            wait_until(ready, 30, "the stream server and its Kafka consumer")
            cpu = CpuWindow(
                {"server": [server.pid], "clients+producer": [os.getpid()], "tansu": [tansu.pid]}
            )
            return trio.run(measure, args, tansu.bootstrap, port, cpu)
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
