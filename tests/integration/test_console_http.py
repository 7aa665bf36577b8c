"""The console's endpoints through the real daemon, as a script would use
them: the page and its security headers, health JSON, mappings, "try a
payload" (admin only, bounded, refusals counted), the first-run sign-in link,
and ``stalled`` in /readyz when records stop moving."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from signal import SIGHUP

from tests.integration.conftest import QUICK_STOP, BridgeSetup
from tests.integration.test_stream_clients import SECRET, client_token, token
from tests.support import BridgeProcess, free_port, publish_many, wait_until

GOOD = b'{"schema_version": 1, "metrics": {"temperature": 21.5}}'


def request(
    port: int,
    path: str,
    *,
    bearer: str | None = None,
    body: bytes | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, _lower(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers.items()), error.read()


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def metric(port: int, name: str) -> float:
    _, _, text = request(port, "/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_page_health_mappings_and_try_a_payload(setup: BridgeSetup) -> None:
    port = setup.listen_port
    admin = token(role="admin")
    config = setup.config("[limits]\nmax_payload_bytes = 1000\n")
    with BridgeProcess(config, env={"EDGE_BRIDGE_JWT_SECRET": SECRET}) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        assert not any(line.text.startswith("Open the console") for line in bridge.lines)

        status, headers, page = request(port, "/")
        assert status == 200 and b"console.js" in page
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        status, headers, _ = request(port, "/console/console.js")
        assert status == 200 and headers["content-type"].startswith("text/javascript")

        publish_many(setup.mosquitto.url, [("tenant/t1/device/D1/telemetry", GOOD, 1)] * 5)
        health = wait_until(
            lambda: (
                (h := json.loads(request(port, "/api/console/health")[2]))["rates"][
                    "records_out_per_s"
                ]
                > 0
                and h
            ),
            15,
            "records out in the health JSON",
        )
        assert health["mqtt"] == "connected" and health["status"] == "ready"
        assert health["spool"]["state"] == "accepting"

        assert request(port, "/api/console/mappings")[0] == 401
        status, _, body = request(port, "/api/console/mappings", bearer=client_token("t1"))
        assert json.loads(body)["groups"] == {}
        (row,) = json.loads(body)["mappings"]
        assert row == {
            "name": "telemetry",
            "mqtt_filter": "tenant/+/device/+/telemetry",
            "qos": 1,
            "kafka": {"clean": setup.clean, "raw": setup.raw, "dead_letter": setup.dlq},
            "key": "{tenant}:{device}",
        }

        topic = "/api/console/try?topic=tenant/t1/device/D1/telemetry"
        status, _, body = request(port, topic, bearer=admin, body=b"{oops", method="POST")
        trial = json.loads(body)
        assert status == 200 and trial["dead_letters"] == ["invalid_json"]
        assert trial["records"][0]["topic"] == setup.dlq
        status, _, body = request(port, topic, bearer=admin, body=GOOD, method="POST")
        assert [r["topic"] for r in json.loads(body)["records"]] == [setup.clean, setup.raw]

        refusals = [
            (None, GOOD, 401),
            (client_token("t1"), GOOD, 403),
            (admin, b"x" * 1001, 413),
        ]
        for bearer, payload, expected in refusals:
            assert request(port, topic, bearer=bearer, body=payload, method="POST")[0] == expected
        assert request(port, "/api/console/try", bearer=admin, body=GOOD, method="POST")[0] == 400
        assert request(port, topic, bearer=admin)[0] == 405
        for reason in ("unauthenticated", "forbidden", "too_large", "bad_request"):
            name = f'edge_bridge_console_try_refused_total{{reason="{reason}"}}'
            assert metric(port, name) == 1, reason
        # Nothing a try made reached Kafka: only the 5 published messages were produced.
        clean = f'edge_bridge_kafka_records_produced_total{{topic="{setup.clean}"}}'
        assert metric(port, clean) == 5
        assert bridge.stop() == 0


def printed_link(bridge: BridgeProcess) -> str:
    """The sign-in link the daemon printed on stdout (read by its own reader
    thread, so it may come in after the log line on stderr)."""
    lines = wait_until(
        lambda: [x.text for x in bridge.lines if x.text.startswith("Open the console: ")],
        30,
        "the sign-in link on stdout",
    )
    assert len(lines) == 1, lines
    return lines[0].removeprefix("Open the console: ")


def sign_in_link_command(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_BRIDGE_")}
    argv = [sys.executable, "-m", "bridge", "sign-in-link", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)


def test_first_run_prints_a_sign_in_link_on_loopback_only(setup: BridgeSetup) -> None:
    port = setup.listen_port
    config = setup.config()
    with BridgeProcess(config) as bridge:
        bridge.wait_for_event("console.sign_in_link", timeout=30)
        link = re.fullmatch(r"http://\S+", printed_link(bridge))
        assert link is not None and link.group().startswith(f"http://127.0.0.1:{port}/#token=")
        secret_file = setup.workdir / "console-secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert secret_file.read_text().strip() not in "\n".join(x.text for x in bridge.lines)
        link_token = link.group().split("#token=")[1]
        assert request(port, "/api/console/mappings", bearer=link_token)[0] == 200
        mark = bridge.mark()
        bridge.send_signal(SIGHUP)
        bridge.wait_for_event("bridge.reloaded", since=mark)
        assert request(port, "/api/console/mappings", bearer=link_token)[0] == 200, "after reload"
        # A new link from the same secret, for when the printed one expired.
        again = sign_in_link_command("--config", str(config))
        assert again.returncode == 0, again.stderr
        new_token = again.stdout.strip().split("#token=")[1]
        assert request(port, "/api/console/mappings", bearer=new_token)[0] == 200
        assert bridge.stop() == 0

    secret_file.unlink()
    missing = sign_in_link_command("--config", str(config))
    assert missing.returncode == 1 and "start `edge-bridge run` once" in missing.stderr
    public = sign_in_link_command("--config", str(config), "--listen", "0.0.0.0:8080")
    assert public.returncode == 2 and "beyond loopback" in public.stderr
    with BridgeProcess(setup.config(), args=["--listen", f"0.0.0.0:{free_port()}"]) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        assert bridge.events("auth.no_key")
        assert not any(x.text.startswith("Open the console") for x in bridge.lines)
        assert not secret_file.exists()
        assert bridge.stop() == 0


def test_readyz_says_stalled_when_spooled_records_stop_moving(setup: BridgeSetup) -> None:
    port = setup.listen_port
    dead_kafka = f"127.0.0.1:{free_port()}"
    config = setup.config("[health]\nstalled_after_s = 2\n", kafka_extra=QUICK_STOP)
    args = ["--kafka-bootstrap", dead_kafka]
    env = {"EDGE_BRIDGE_JWT_SECRET": SECRET}
    with BridgeProcess(config, args=args, env=env) as bridge:
        bridge.wait_for_event("spool.active", timeout=30)
        # Subscribed: the spool can become active before MQTT is (Kafka is
        # known to be down first), and a message published before the
        # subscription exists is not delivered to the bridge at all.
        bridge.wait_for_event("bridge.ready", timeout=30)
        publish_many(setup.mosquitto.url, [("tenant/t1/device/D1/telemetry", GOOD, 1)] * 3)
        _, _, body = wait_until(
            lambda: (r := request(port, "/readyz"))[0] == 503 and b"oldest spooled" in r[2] and r,
            30,
            "/readyz to say stalled",
        )
        reasons = json.loads(body)["reasons"]
        assert reasons == [r for r in reasons if r.startswith("stalled:")], (
            "stalled is the only reason: everything is connected"
        )
        assert metric(port, "edge_bridge_spool_oldest_record_age_seconds") > 2
        assert metric(port, "edge_bridge_kafka_ack_wait_seconds") > 2
        health = json.loads(request(port, "/api/console/health")[2])
        assert health["kafka"] == "down" and health["spool"]["records"] == 6
        assert health["spool"]["oldest_record_age_s"] >= 2
        assert bridge.stop() == 0
