"""Run the whole benchmark and print one table.

    .venv/bin/python bench/run.py                 # 30 s of steady load per measurement
    .venv/bin/python bench/run.py --quick         # a few seconds each, to see it work
    .venv/bin/python bench/run.py --only qos1,naive-qos1 --set kafka.linger_ms=1
    .venv/bin/python bench/run.py --table-from results.json   # re-print a saved run

Every measurement starts its own mosquitto (broker_config/mosquitto-test.conf),
Tansu and system under test on loopback, drives it with publisher processes
(bench/mqtt_load.py) and counts what reaches Kafka in a probe process
(bench/kafka_probe.py), so neither load nor measurement shares the bridge's
GIL (bench/ingest.py).  See docs/benchmarks.md for the method and results.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import stream_fanout  # noqa: E402
from bench.ingest import IngestResult, Phase, Timing, measure_ingest  # noqa: E402
from bench.machine import machine  # noqa: E402
from bench.report import table  # noqa: E402
from bench.shared_scaling import with_references  # noqa: E402
from bench.systems import Settings  # noqa: E402
from bridge import native  # noqa: E402

LATENCY_RATE = 10_000
NO_STREAM: Settings = {"stream": {"source": "local"}}
#: Kafka -> WebSocket fan-out (bench/stream_fanout.py): clients per run.
STREAM_PHASES = {"ws1": 1, "ws10": 10, "ws100": 100}
#: Deliveries in the capacity burst (records x clients), and the paced load
#: for the latency, as a share of the capacity just measured.
STREAM_DELIVERIES = 300_000
STREAM_LATENCY_SHARE = 0.5
STREAM_MAX_RECORDS = 50_000


def measure_stream(clients: int, timing: Timing) -> dict[str, Any]:
    deliveries = STREAM_DELIVERIES if timing.duration >= 10 else STREAM_DELIVERIES // 10
    # Below the clients' queue (100,000 events): a burst is the server's
    # capacity, not the slow-client policy's.
    records = max(1, min(STREAM_MAX_RECORDS, deliveries // clients))
    argv = [f"--clients={clients}", f"--records={records}"]
    argv += [f"--seconds={timing.duration}", f"--latency-share={STREAM_LATENCY_SHARE}"]
    return stream_fanout.run_fanout(stream_fanout.parse_args(argv))


INGEST_PHASES: dict[str, Phase] = {
    "qos1": Phase("bridge", qos=1),
    "qos0": Phase("bridge", qos=0),
    "latency": Phase("bridge", qos=1, rate=LATENCY_RATE, latency=True),
    "latency-no-stream": Phase(
        "bridge", qos=1, rate=LATENCY_RATE, latency=True, settings=NO_STREAM
    ),
    # The same daemon without the stream's Kafka consumer, which otherwise
    # reads every clean record back: the cost of ingest alone.
    "qos1-no-stream": Phase("bridge", qos=1, settings=NO_STREAM),
    # The same bridge with a raw-only (pass-through) mapping: the cost of
    # moving a message, without the cost of judging it.
    "qos1-raw": Phase("bridge", qos=1, settings={"mappings.kafka": {"clean_enabled": False}}),
    "qos0-no-stream": Phase("bridge", qos=0, settings=NO_STREAM),
    "naive-qos1": Phase("naive", qos=1),
    "naive-qos0": Phase("naive", qos=0),
    "naive-latency": Phase("naive", qos=1, rate=LATENCY_RATE, latency=True),
    # The reference every run is compared to: a paho subscriber that only
    # receives and acknowledges (bench/paho_sink.py).
    "paho-qos1": Phase("paho", qos=1),
    # Scaling on one gateway (bench/shared_scaling.py): two daemons on one MQTT 5
    # shared subscription, and runs pinned to cores that check the projection.
    "qos1-shared2": Phase("bridge", qos=1, instances=2),
    "qos1-shared2-no-stream": Phase("bridge", qos=1, instances=2, settings=NO_STREAM),
    "qos1-pin-split": Phase("bridge", qos=1, pinning="split"),
    "qos1-shared2-pin-split": Phase("bridge", qos=1, instances=2, pinning="split"),
    "qos1-shared2-pin-own": Phase("bridge", qos=1, instances=2, pinning="own"),
    # Sparkplug B: DDATA naming 10 metrics by alias (bench/mqtt_load.py SparkplugLoad).
    "spb-qos1": Phase("bridge", qos=1, sparkplug=True),
    "spb-qos1-no-stream": Phase("bridge", qos=1, settings=NO_STREAM, sparkplug=True),
}


def _overrides(items: list[str]) -> Settings:
    """``section.key=value`` (value as JSON, else text) -> ``{section: {key: value}}``."""
    out: Settings = {}
    for item in items:
        path, sep, text = item.partition("=")
        section, dot, key = path.rpartition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {item!r}: expected section.key=value")
        try:
            value: object = json.loads(text)
        except ValueError:
            value = text
        out.setdefault(section, {})[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="steady window, s")
    parser.add_argument("--warmup", type=float, default=3.0, help="before the window, s")
    parser.add_argument("--quick", action="store_true", help="3 s windows, 1 s warm-up")
    every = [*INGEST_PHASES, *STREAM_PHASES]
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(every)}")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="a bridge config value for every bridge run, e.g. kafka.linger_ms=1",
    )  # fmt: skip
    parser.add_argument("--profile", type=Path, help="py-spy the bridge into this directory")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--table-from", type=Path, metavar="JSON",
        help="measure nothing: print the table of results saved with --json",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.table_from:
        try:
            saved = json.loads(args.table_from.read_text())
            header = " · ".join(f"{k} {v}" for k, v in saved["machine"].items())
            loaded = {k: IngestResult(**v) for k, v in saved["results"].items()}
            stream_loaded = {int(k): v for k, v in saved["stream"].items()}
            text = table(loaded, LATENCY_RATE, stream_loaded, cores=int(saved["machine"]["nproc"]))
        except (
            OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError,
            ArithmeticError,
        ) as exc:  # fmt: skip
            # A file of another kind, a half-written one, one nested past json's
            # recursion limit, a number past a float's range, or one from an older bench.
            parser.error(
                f"--table-from {args.table_from}: not a run saved by this bench's --json "
                f"({type(exc).__name__}: {exc}); save one with --json FILE"
            )
        print(header)
        print(text)
        return 0
    timing = Timing(3.0, 1.0) if args.quick else Timing(args.duration, args.warmup)
    chosen = args.only.split(",") if args.only else every
    unknown = set(chosen) - set(every)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    chosen = with_references(chosen)
    overrides = _overrides(args.set)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    info = machine()
    info["settings"] = json.dumps(overrides) if overrides else "defaults"
    # The daemons run from this checkout: its build of the hot path (setup.py).
    info["hot_path"] = native.describe()
    print(" · ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    results: dict[str, IngestResult] = {}
    stream: dict[int, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edge-bridge-bench-") as tmp:
        for name in chosen:
            print(f"... {name}", flush=True)
            try:
                if name in STREAM_PHASES:
                    stream[STREAM_PHASES[name]] = measure_stream(STREAM_PHASES[name], timing)
                else:
                    phase = INGEST_PHASES[name]
                    spy = args.profile / f"{name}.txt" if args.profile else None
                    results[name] = measure_ingest(
                        name, phase, timing, Path(tmp) / name, overrides,
                        spy if phase.system == "bridge" else None,
                    )  # fmt: skip
                    print(f"    {asdict(results[name])}", flush=True)
            except Exception as exc:  # one broken measurement must not lose the others
                failed[name] = f"{type(exc).__name__}: {exc}"
                print(f"    FAILED {failed[name]}", flush=True)
            if args.json:
                payload = {
                    "machine": info,
                    "results": {k: asdict(v) for k, v in results.items()},
                    "stream": stream,
                    "failed": failed,
                }
                args.json.write_text(json.dumps(payload, indent=2))
    print()
    print(table(results, LATENCY_RATE, stream, cores=int(info["nproc"])))
    for name, error in failed.items():
        print(f"\nFAILED {name}: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
