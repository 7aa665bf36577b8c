"""CPU per message of the bridge's own QoS 1 path, without brokers or load.

    .venv/bin/python bench/core_cost.py                      # all stages, 50,000 messages
    .venv/bin/python bench/core_cost.py --stage normalize --messages 20000
    valgrind --tool=callgrind .venv/bin/python bench/core_cost.py --stage normalize

The end-to-end bench (bench/run.py) shares two cores with mosquitto, Tansu
and the load, so its rates move with whatever else the machine runs.  This
script runs the same steps in one process, on pre-built bytes, so the CPU
they cost can be compared before and after a change even on a busy machine
(CPU time, not wall time; or instruction counts under callgrind, which do
not depend on the machine at all):

* ``framer``: cutting MQTT PUBLISH packets out of received bytes
  (bridge/core/mqtt_codec.py);
* ``normalize``: the above, plus the default ``telemetry`` mapping run by
  the core (bridge/core/normalize.py): 2 clean records and 1 raw record per
  message;
* ``ingest``: the above through :class:`bridge.ingest.pipeline.Ingest`, producing
  every record with the daemon's :class:`KafkaProducer` to a Tansu started
  for the run (or ``--bootstrap``), delivery reports and the QoS 1
  acknowledgement bookkeeping included, until every message is
  acknowledged.  librdkafka's own threads are in the CPU time too; the
  broker, another process, is not.

A first pass over every device fills the normalizer's per-topic caches, as
in a daemon that has been running; it is not timed.  It prints one line: the
stage, the messages, CPU seconds of the process and CPU-µs per message
(process time: every thread).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.mqtt_load import DEVICES, device_name, payload, topic_for  # noqa: E402
from bridge.core.mqtt_codec import Framer, puback  # noqa: E402
from bridge.core.normalize import Normalizer, Now  # noqa: E402
from bridge.core.settings import KafkaSettings  # noqa: E402
from bridge.daemon import tune_gc  # noqa: E402

#: One recv() worth of bytes, as the MQTT client reads them.
RECV_BYTES = 65_536
CONFIG = """
[[mappings]]
name = "telemetry"
[mappings.mqtt]
qos = 1
[mappings.kafka]
clean_topic = "clean"
raw_topic = "raw"
dead_letter_topic = "dlq"
"""
#: ``--mapping raw``: the same mapping as a pass-through (the bench's
#: ``qos1-raw``): one raw record per message, the payload not read.
RAW_ONLY = "clean_enabled = false\n"


def publish_packet(topic: str, body: bytes, mid: int) -> bytes:
    """A QoS 1 MQTT 5 PUBLISH (no properties), as the broker sends it."""
    name = topic.encode()
    variable = len(name).to_bytes(2, "big") + name + mid.to_bytes(2, "big") + b"\x00"
    rest = variable + body
    size = len(rest)
    length = bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            break
    return bytes([0x32]) + bytes(length) + rest


def received_chunks(messages: int) -> list[bytes]:
    """The load's messages as the bridge receives them: 64 KiB reads."""
    now = time.time_ns()
    stream = b"".join(
        publish_packet(
            topic_for(device_name(i % DEVICES)), payload(device_name(i % DEVICES), now, i),
            i % 65_535 + 1,
        )
        for i in range(messages)
    )  # fmt: skip
    return [stream[i : i + RECV_BYTES] for i in range(0, len(stream), RECV_BYTES)]


def normalizer(raw_only: bool) -> Normalizer:
    from bridge.runtime import build_runtime

    directory = Path(sys.argv[0]).resolve().parent
    path = directory / ".core_cost.toml"
    path.write_text(CONFIG + RAW_ONLY if raw_only else CONFIG)
    try:
        runtime = build_runtime(path, {}, {})
    finally:
        path.unlink()
    return Normalizer(runtime.plan)


class Acks:
    """Stands in for the MQTT client: acknowledgements queued as bytes, as
    the client does, and counted."""

    def __init__(self) -> None:
        self.acks = bytearray()
        self.count = 0

    def ack(self, generation: int, mid: int) -> None:
        self.acks += puback(mid)
        self.count += 1

    def flush_writes(self) -> None:
        self.acks.clear()


def run(stage: str, messages: int, bootstrap: str, raw_only: bool) -> tuple[int, float]:
    chunks = received_chunks(messages)
    framer = Framer(v5=True)
    core = normalizer(raw_only) if stage != "framer" else None
    if core is not None:
        now = Now(time.time_ns() // 1_000_000)
        warm = Framer(v5=True)
        for chunk in received_chunks(DEVICES):
            for m in warm.feed(chunk)[0]:
                core.process(m.topic, m.payload, now, m.user_properties, m.qos, m.retain)
    sink: Any = None
    producer: Any = None
    acks = Acks()
    if stage == "ingest":
        from bridge.ingest.pipeline import Ingest
        from bridge.ingest.stats import IngestStats
        from bridge.io.kafka_producer import KafkaProducer

        assert core is not None
        # No listener: this loop serves the delivery reports itself, and tells
        # the ingest path after each batch, as the producer's listener would.
        producer = KafkaProducer(KafkaSettings(bootstrap=bootstrap))
        sink = Ingest(core, producer, IngestStats(), acks)
    started = time.process_time()
    count = 0
    now = Now(time.time_ns() // 1_000_000)
    for chunk in chunks:
        batch, _ = framer.feed(chunk)
        count += len(batch)
        if sink is not None:
            sink.handle_batch(batch, 0)
            producer._producer.poll(0)
            producer._settle()
            sink.after_reports()
        elif core is not None:
            process = core.process
            for m in batch:
                process(m.topic, m.payload, now, m.user_properties, m.qos, m.retain)
    if sink is not None:
        deadline = time.monotonic() + 60
        while acks.count < count and time.monotonic() < deadline:
            producer._producer.poll(0.01)
            producer._settle()
            sink.after_reports()
        if acks.count != count:
            raise SystemExit(f"only {acks.count} of {count} messages acknowledged")
    return count, time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("framer", "normalize", "ingest"), default="ingest")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--bootstrap", help="a Kafka broker to produce to (default: a Tansu)")
    parser.add_argument(
        "--mapping", choices=("default", "raw"), default="default",
        help="raw: the mapping as a pass-through, one raw record per message (qos1-raw)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    tune_gc()  # as the daemon does after start-up
    with ExitStack() as stack:
        bootstrap = args.bootstrap
        if args.stage == "ingest" and not bootstrap:
            from tests.support import Tansu

            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            bootstrap = stack.enter_context(Tansu(workdir)).bootstrap
        count, cpu = run(args.stage, args.messages, bootstrap or "", args.mapping == "raw")
    per_message = cpu / count * 1e6
    print(
        f"{args.stage} ({args.mapping} mapping) {count} messages {cpu:.3f} s CPU"
        f" {per_message:.2f} us/message"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
