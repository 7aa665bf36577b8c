"""The normalizer's cost per message, JSON beside Sparkplug B, in one process.

    .venv/bin/python bench/sparkplug_core.py              # 15 rounds of 20,000 messages each
    .venv/bin/python bench/sparkplug_core.py --rounds 3 --messages 2000

The JSON case is the message of the end-to-end bench (bench/mqtt_load.py: 200
bytes, two metrics) through the default mapping; the Sparkplug case is a DDATA
naming 10 metrics by alias only (5 Double, 3 Int32, 1 Boolean, 1 String) through
mappings/sparkplug.toml, each device born first with its DBIRTH.  Both run over
1000 devices, alternately round by round, and the CPU time of this process is
what is measured, so the two share whatever else the machine does.  Printed: the
best and median round of each, as messages/s and clean records/s (each message
also makes one raw record, not counted).

This is the core stage only (decode, resolve, validate, encode the records);
the MQTT receive path and Kafka are the same for both formats and measured by
bench/run.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.mqtt_load import DEVICES, device_name, payload, topic_for  # noqa: E402
from bridge.config_loader import load_config  # noqa: E402
from bridge.core.normalize import Normalizer, Now  # noqa: E402
from bridge.core.plan import compile_config  # noqa: E402
from tests.support import sparkplug_encoder as enc  # noqa: E402

NOW = Now(1_772_028_061_123)
GROUP = "bench"
# (name, alias, datatype, value of message n)
METRICS = [
    *((f"temp_{i}", i, enc.DOUBLE, lambda n, i=i: 20.0 + i + n % 100 / 10) for i in range(5)),
    *((f"count_{i}", 5 + i, enc.INT32, lambda n, i=i: n * (i + 1) % 100_000) for i in range(3)),
    ("running", 8, enc.BOOLEAN, lambda n: n % 2 == 0),
    ("mode", 9, enc.STRING, lambda n: ("eco", "boost")[n % 2]),
]


def _normalizer(mapping: str) -> Normalizer:
    return Normalizer(compile_config(load_config(REPO_ROOT / "mappings" / mapping)))


def json_case(count: int) -> tuple[Normalizer, list[tuple[str, bytes]]]:
    now_ns = time.time_ns()
    messages = [
        (topic_for(device_name(n % DEVICES)), payload(device_name(n % DEVICES), now_ns, n))
        for n in range(count)
    ]
    return _normalizer("telemetry.toml"), messages


def sparkplug_case(count: int) -> tuple[Normalizer, list[tuple[str, bytes]]]:
    normalizer = _normalizer("sparkplug.toml")
    seq = 0
    node_birth = enc.node_birth([], seq=seq, timestamp=NOW.epoch_ms)
    normalizer.process(f"spBv1.0/{GROUP}/NBIRTH/gw", node_birth, NOW)
    for d in range(DEVICES):
        seq = (seq + 1) % 256
        birth = enc.payload(
            [enc.metric(name, alias=a, datatype=dt, value=v(0)) for name, a, dt, v in METRICS],
            seq=seq,
            timestamp=NOW.epoch_ms,
        )
        normalizer.process(f"spBv1.0/{GROUP}/DBIRTH/gw/{device_name(d)}", birth, NOW)
    messages = []
    for n in range(count):
        seq = (seq + 1) % 256
        data = enc.payload(
            [enc.metric(alias=a, datatype=dt, value=v(n)) for _, a, dt, v in METRICS],
            seq=seq,
            timestamp=NOW.epoch_ms + n,
        )
        messages.append((f"spBv1.0/{GROUP}/DDATA/gw/{device_name(n % DEVICES)}", data))
    return normalizer, messages


def _round(normalizer: Normalizer, messages: list[tuple[str, bytes]]) -> tuple[float, int]:
    """CPU seconds for one pass, and the clean records it made."""
    process = normalizer.process
    clean = 0
    started = time.process_time()
    for topic, body in messages:
        clean += process(topic, body, NOW).clean
    return time.process_time() - started, clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args(argv)
    cases = {"json": json_case(args.messages), "sparkplug": sparkplug_case(args.messages)}
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    records: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, (normalizer, messages) in cases.items():
            spent, clean = _round(normalizer, messages)
            seconds[name].append(spent)
            records[name] = clean
    print("| case | clean records/msg | best msgs/s | best records/s | median msgs/s |")
    print("|---|---|---|---|---|")
    for name, spent in seconds.items():
        per_message = records[name] / args.messages
        best = args.messages / min(spent)
        median = args.messages / statistics.median(spent)
        print(
            f"| {name} | {per_message:g} | {best:,.0f} | {best * per_message:,.0f} "
            f"| {median:,.0f} |"
        )
    expected = {"json": 2 * args.messages, "sparkplug": len(METRICS) * args.messages}
    if records != expected:  # a message refused would make the comparison meaningless
        print(f"unexpected clean record counts: {records}, expected {expected}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
