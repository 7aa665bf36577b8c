"""The console in a real browser (Debian's chromium, headless, through
Playwright), against the real daemon with mosquitto and Tansu.

The first test is the README's first-run walk-through: no key configured, no
Kafka reachable, open the printed link, publish with MQTT, and the reading
shows in the table and the chart beside "Kafka: down" and the records waiting
in the spool; a malformed payload shows under dead letters with its reason; a
filter narrows the table; "try a payload" shows the records and a refusal.
The second signs in with tokens through the form: a client token sees only
its tenant's readings and dead letters (fed from Kafka this time) and cannot
try payloads, where an admin sees both tenants.  Both check that no request
left 127.0.0.1, and save screenshots under test-artifacts/screenshots/.
"""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Page, expect

from tests.integration.conftest import QUICK_STOP, BridgeSetup
from tests.integration.test_console_http import printed_link
from tests.integration.test_stream_clients import SECRET, client_token, create_topic, token
from tests.support import BridgeProcess, free_port, publish_many
from tests.support.browser import DESKTOP, PHONE, RequestLog, chromium, screenshot

pytestmark = pytest.mark.timeout(120)


def reading(device: str, **metrics: float) -> bytes:
    return json.dumps({"schema_version": 1, "device": device, "metrics": metrics}).encode()


def topic(tenant: str, device: str) -> str:
    return f"tenant/{tenant}/device/{device}/telemetry"


def wait_live(page: Page) -> None:
    expect(page.locator("#stream-state")).to_have_text("live", timeout=15_000)
    expect(page.locator("#dead-state")).to_have_text("live", timeout=15_000)


def test_first_run_walk_through_in_a_browser(setup: BridgeSetup) -> None:
    port = setup.listen_port
    no_kafka = ["--kafka-bootstrap", f"127.0.0.1:{free_port()}"]
    config = setup.config(kafka_extra=QUICK_STOP)
    with BridgeProcess(config, args=no_kafka) as bridge, chromium() as browser:
        bridge.wait_for_event("spool.active", timeout=30)
        bridge.wait_for_event("bridge.ready", timeout=30)  # subscribed before publishing
        link = printed_link(bridge)
        log = RequestLog()
        page = log.attach(browser.new_page(viewport=DESKTOP))
        page.goto(link)
        wait_live(page)
        assert page.url == f"http://127.0.0.1:{port}/", "the token left the address bar"
        assert page.evaluate("sessionStorage.getItem('edge-bridge-token')") in link
        expect(page.locator("#whoami-text")).to_have_text("admin")

        publish_many(
            setup.mosquitto.url, [(topic("t1", "DEV-001"), reading("DEV-001", temperature=23.5), 1)]
        )
        row = page.locator("#events-body tr", has_text="temperature")
        expect(row).to_contain_text("DEV-001", timeout=10_000)
        expect(row).to_contain_text("23.5")
        chart = page.locator('#charts figure[data-metric="temperature"] canvas')
        expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=5000)
        expect(page.locator("#pill-kafka")).to_have_text("Kafka: down", timeout=10_000)
        expect(page.locator("#pill-spool")).to_contain_text(
            re.compile(r"Spool: [1-9]\d* records? waiting"), timeout=10_000
        )

        publish_many(setup.mosquitto.url, [(topic("t1", "DEV-009"), b"garbage", 1)])
        dead = page.locator("#dead-body tr", has_text="DEV-009")
        expect(dead).to_contain_text("invalid_json", timeout=5000)
        expect(dead).to_contain_text("garbage")
        expect(dead).to_have_attribute("title", "from local")  # no Kafka: this daemon's own
        # The README's picture (docs/console.png is a copy of this one).
        screenshot(page, "first-run-top", full_page=False)

        more = [
            (topic("t1", f"DEV-00{n}"), reading(f"DEV-00{n}", temperature=20.0 + n), 1)
            for n in (2, 3)
        ]
        publish_many(setup.mosquitto.url, more)
        rows = page.locator("#events-body tr")
        expect(rows).to_have_count(3, timeout=5000)
        page.fill("#filter-device", "DEV-002")
        expect(rows).to_have_count(1)
        expect(rows).to_contain_text("DEV-002")
        page.fill("#filter-device", "")
        expect(rows).to_have_count(3)

        page.click("#try-button")
        result = page.locator("#try-result")
        expect(result.locator(".record")).to_have_count(2, timeout=5000)
        expect(result).to_contain_text("Mapping telemetry: 2 record(s)")
        page.fill("#try-payload", '{"schema_version": 1, "metrics": {"temperature": oops}}')
        page.click("#try-button")
        expect(result.locator(".record.dead")).to_have_count(1, timeout=5000)
        expect(result).to_contain_text("dead letter(s): invalid_json")

        page.fill(
            "#try-payload",
            '{"schema_version": 1, "device": "DEV-001", "metrics": {"temperature": 23.5}}',
        )
        page.click("#try-button")
        expect(result.locator(".record")).to_have_count(2, timeout=5000)
        screenshot(page, "first-run-desktop")
        page.set_viewport_size(PHONE)
        page.evaluate("window.scrollTo(0, 0)")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page is {width} px wide on a phone"
        screenshot(page, "first-run-phone", full_page=False)
        assert log.foreign(port) == [], log.foreign(port)
        assert log.console_errors == [], log.console_errors
        assert bridge.stop() == 0


def test_a_client_token_sees_its_tenant_only_and_cannot_try(setup: BridgeSetup) -> None:
    port = setup.listen_port
    env = {"EDGE_BRIDGE_JWT_SECRET": SECRET}
    # Made before the daemon starts, so both consumers are assigned at once.
    create_topic(setup.tansu.bootstrap, setup.clean, partitions=1)
    create_topic(setup.tansu.bootstrap, setup.dlq, partitions=1)
    registry = """
[devices.t1.A-1]
groups = ["pumps"]
[devices.t1.A-2]
groups = ["fans"]
[devices.t2.B-1]
groups = ["pumps"]
"""
    with BridgeProcess(setup.config(registry), env=env) as bridge, chromium() as browser:
        bridge.wait_for_event("bridge.ready", timeout=30)
        log = RequestLog()
        pages = {}
        for name, bearer in (("admin", token(role="admin")), ("client", client_token("t1"))):
            page = log.attach(browser.new_page(viewport=DESKTOP))
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#token-input", bearer)
            page.click("#signin-button")
            wait_live(page)
            pages[name] = page
        admin, client = pages["admin"], pages["client"]
        expect(client.locator("#whoami-text")).to_have_text("client · tenant t1")
        expect(client.locator("#try")).to_be_hidden()
        # The stream and the dead letters come from Kafka here: wait for both consumers.
        bridge.wait_for_event("stream.kafka_state", timeout=30, state="ok")
        bridge.wait_for_event("console.dead_letters.kafka_state", timeout=30, state="ok")

        messages = [
            (topic("t1", "A-2"), reading("A-2", temperature=3.0), 1),
            (topic("t1", "A-1"), reading("A-1", temperature=1.0), 1),
            (topic("t2", "B-1"), reading("B-1", temperature=2.0), 1),
            (topic("t1", "A-1"), b"{t1 broken", 1),
            (topic("t2", "B-1"), b"{t2 broken", 1),
        ]
        publish_many(setup.mosquitto.url, messages)
        for device in ("A-1", "B-1"):
            expect(admin.locator("#events-body tr", has_text=device)).to_have_count(
                1, timeout=15_000
            )
            expect(admin.locator("#dead-body tr", has_text=device)).to_have_count(1, timeout=15_000)
        expect(client.locator("#events-body tr", has_text="A-1")).to_have_count(1, timeout=5000)
        expect(client.locator("#dead-body tr", has_text="A-1")).to_have_count(1, timeout=5000)
        expect(client.locator("#events-body tr", has_text="B-1")).to_have_count(0)
        expect(client.locator("#dead-body tr", has_text="B-1")).to_have_count(0)

        # Groups from the device registry: a client is offered its tenant's only.
        group_options = client.locator("#filter-group option")
        expect(group_options).to_have_text(["all", "fans (t1)", "pumps (t1)"])
        client.select_option("#filter-group", "t1/fans")
        expect(client.locator("#events-body tr")).to_have_count(1)
        expect(client.locator("#events-body tr")).to_contain_text("A-2")
        admin.select_option("#filter-group", "t2/pumps")
        expect(admin.locator("#events-body tr")).to_have_count(1)
        expect(admin.locator("#events-body tr")).to_contain_text("B-1")

        answer = client.evaluate(
            """async () => {
                const token = sessionStorage.getItem('edge-bridge-token');
                const r = await fetch('/api/console/try?topic=tenant/t1/device/A-1/telemetry', {
                    method: 'POST', body: '{}', headers: {Authorization: 'Bearer ' + token}});
                return [r.status, (await r.json()).error];
            }"""
        )
        assert answer == [403, "forbidden"]
        # Both came through Kafka, not the local fallback.
        dead_row = client.locator("#dead-body tr", has_text="A-1")
        expect(dead_row).to_have_attribute("title", "from kafka")
        for page in (client, admin):
            expect(page.locator("#h-stream")).to_contain_text("(kafka)", timeout=5000)
        screenshot(client, "client-t1")
        screenshot(admin, "admin-both-tenants")
        assert log.foreign(port) == [], log.foreign(port)
        assert bridge.stop() == 0
