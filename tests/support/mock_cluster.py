"""librdkafka's mock Kafka cluster, for faults Tansu cannot show.

The librdkafka inside the confluent-kafka wheel exports its mock-cluster API
(rdkafka_mock.h): N brokers on loopback ports speaking the Kafka protocol,
whose brokers can be taken down, whose partition leaders can be moved and
whose requests can be made to fail with chosen error codes.  It is called
through ctypes in a child process of its own (``python -m
tests.support.mock_cluster``), so the daemon and the test's Kafka reader reach
it over TCP like any cluster, and its threads never share an interpreter with
the test.

The child prints ``bootstrap <host:port,...>`` once it serves, then reads one
command per line on stdin and answers ``ok`` or ``error <text>``:

    down <broker-id>            up <broker-id>
    rtt <broker-id> <ms>        (the broker answers every request that much later)
    leader <topic> <partition> <broker-id>
    produce-errors <code> [<code> ...]     (the next Produce requests fail with these)

The API is marked experimental upstream; the calls used here are the ones
tried on this wheel (see the project's notes on Kafka for tests).  The mock
keeps only about 5 MiB per partition, plenty for a fault test.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Self

from .bridge_process import REPO_ROOT

PRODUCE_API_KEY = 0


def _librdkafka() -> ctypes.CDLL:
    """The librdkafka bundled with confluent-kafka (the version the daemon uses)."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka-*.so.1"))
    if not found:
        raise AssertionError(f"no librdkafka in {libs}: is confluent-kafka a wheel install?")
    lib = ctypes.CDLL(str(found[0]))
    ptr, c_int, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    signatures: dict[str, tuple[object, list[object]]] = {
        "rd_kafka_conf_new": (ptr, []),
        "rd_kafka_conf_set": (c_int, [ptr, c_char_p, c_char_p, c_char_p, ctypes.c_size_t]),
        "rd_kafka_new": (ptr, [c_int, ptr, c_char_p, ctypes.c_size_t]),
        "rd_kafka_mock_cluster_new": (ptr, [ptr, c_int]),
        "rd_kafka_mock_cluster_bootstraps": (c_char_p, [ptr]),
        "rd_kafka_mock_topic_create": (c_int, [ptr, c_char_p, c_int, c_int]),
        "rd_kafka_mock_broker_set_down": (c_int, [ptr, ctypes.c_int32]),
        "rd_kafka_mock_broker_set_up": (c_int, [ptr, ctypes.c_int32]),
        "rd_kafka_mock_broker_set_rtt": (c_int, [ptr, ctypes.c_int32, c_int]),
        "rd_kafka_mock_partition_set_leader": (
            c_int,
            [ptr, c_char_p, ctypes.c_int32, ctypes.c_int32],
        ),
        "rd_kafka_mock_push_request_errors_array": (
            None,
            [ptr, ctypes.c_int16, ctypes.c_size_t, ctypes.POINTER(c_int)],
        ),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


class _Served:
    """The child side: one mock cluster and its command loop."""

    def __init__(self, brokers: int, topics: Sequence[str], partitions: int) -> None:
        self.lib = lib = _librdkafka()
        errstr = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        # A handle to own the cluster; it never talks to anything itself, so its
        # notice about having no bootstrap.servers is not worth printing.
        self._check(lib.rd_kafka_conf_set(conf, b"log_level", b"4", errstr, len(errstr)), "conf")
        handle = lib.rd_kafka_new(0, conf, errstr, len(errstr))
        if not handle:
            raise SystemExit(f"rd_kafka_new: {errstr.value.decode()}")
        self.handle = handle
        self.cluster = lib.rd_kafka_mock_cluster_new(handle, brokers)
        if not self.cluster:
            raise SystemExit("rd_kafka_mock_cluster_new failed")
        for topic in topics:
            self._check(
                lib.rd_kafka_mock_topic_create(
                    self.cluster, topic.encode(), partitions, min(brokers, 3)
                ),
                f"create {topic}",
            )

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise ValueError(f"{what}: librdkafka error {code}")

    def bootstraps(self) -> str:
        value: bytes = self.lib.rd_kafka_mock_cluster_bootstraps(self.cluster)
        return value.decode()

    def command(self, words: list[str]) -> None:
        lib, cluster = self.lib, self.cluster
        match words:
            case ["down", broker]:
                self._check(lib.rd_kafka_mock_broker_set_down(cluster, int(broker)), "down")
            case ["up", broker]:
                self._check(lib.rd_kafka_mock_broker_set_up(cluster, int(broker)), "up")
            case ["rtt", broker, ms]:
                self._check(lib.rd_kafka_mock_broker_set_rtt(cluster, int(broker), int(ms)), "rtt")
            case ["leader", topic, partition, broker]:
                self._check(
                    lib.rd_kafka_mock_partition_set_leader(
                        cluster, topic.encode(), int(partition), int(broker)
                    ),
                    "leader",
                )
            case ["produce-errors", *codes] if codes:
                array = (ctypes.c_int * len(codes))(*(int(c) for c in codes))
                lib.rd_kafka_mock_push_request_errors_array(
                    cluster, PRODUCE_API_KEY, len(codes), array
                )
            case _:
                raise ValueError(f"unknown command {' '.join(words)!r}")


def main(argv: Sequence[str]) -> None:
    """``python -m tests.support.mock_cluster BROKERS PARTITIONS TOPIC...``"""
    brokers, partitions, *topics = argv
    served = _Served(int(brokers), topics, int(partitions))
    print(f"bootstrap {served.bootstraps()}", flush=True)
    for line in sys.stdin:
        try:
            served.command(line.split())
        except ValueError as exc:
            print(f"error {exc}", flush=True)
        else:
            print("ok", flush=True)


class MockCluster:
    """A mock cluster of ``brokers`` brokers (ids 1..N) with ``topics`` created,
    each with ``partitions`` partitions replicated on up to three brokers."""

    def __init__(
        self, topics: Sequence[str], *, brokers: int = 3, partitions: int = 4, timeout: float = 10
    ) -> None:
        self.brokers = brokers
        self.partitions = partitions
        self.timeout = timeout
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.mock_cluster",
                str(brokers),
                str(partitions),
                *topics,
            ],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        words = self._reply().split()
        if words[:1] != ["bootstrap"] or len(words) != 2:
            self.close()
            raise AssertionError(f"mock cluster did not start: {' '.join(words)!r}")
        self.bootstrap = words[1]

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        return self._proc.stdin, self._proc.stdout

    def _reply(self) -> str:
        """The child's next line.  It answers at once (every command is a quick
        call into librdkafka); a child that died ends the pipe, so this fails
        instead of waiting."""
        line = self._pipes()[1].readline()
        if not line:
            code = self._proc.wait(self.timeout)
            raise AssertionError(f"mock cluster exited with code {code}")
        return line.strip()

    def _command(self, *words: object) -> None:
        stdin, _ = self._pipes()
        stdin.write(" ".join(str(w) for w in words) + "\n")
        stdin.flush()
        reply = self._reply()
        if reply != "ok":
            raise AssertionError(f"mock cluster: {' '.join(map(str, words))}: {reply}")

    def set_down(self, broker: int) -> None:
        """Close the broker's connections and refuse new ones."""
        self._command("down", broker)

    def set_up(self, broker: int) -> None:
        self._command("up", broker)

    def set_rtt(self, broker: int, ms: int) -> None:
        """Delay every answer of the broker by ``ms`` (0: none)."""
        self._command("rtt", broker, ms)

    def move_leader(self, topic: str, partition: int, broker: int) -> None:
        self._command("leader", topic, partition, broker)

    def fail_produce(self, codes: Sequence[int]) -> None:
        """The next ``len(codes)`` Produce requests fail, with these Kafka error codes."""
        self._command("produce-errors", *codes)

    def close(self) -> None:
        stdin, stdout = self._pipes()
        stdin.close()
        try:
            self._proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if __name__ == "__main__":
    main(sys.argv[1:])
