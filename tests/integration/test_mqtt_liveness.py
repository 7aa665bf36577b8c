"""When the daemon gives an MQTT connection up, through a real mosquitto: a
broker that stopped answering.  The opposite, a connection kept while a late
SUBACK and late PINGRESPs queue behind a backlog, is in test_backlog_drain.py;
a refused SUBACK (which mosquitto 2.0 never sends for an ACL) is in
tests/integration/test_mqtt_session.py."""

from __future__ import annotations

import signal

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess


def test_a_frozen_broker_is_given_up_after_an_unanswered_ping(setup: BridgeSetup) -> None:
    config = setup.config(mqtt_extra="keepalive_s = 1")
    with BridgeProcess(config) as bridge:
        bridge.wait_for_event("bridge.ready")
        mark = bridge.mark()
        setup.mosquitto.send_signal(signal.SIGSTOP)
        try:
            # One interval of silence, a PINGREQ, one more interval unanswered.
            lost = bridge.wait_for_event("mqtt.disconnected", timeout=10, since=mark)
        finally:
            setup.mosquitto.send_signal(signal.SIGCONT)
        assert lost["reason"].startswith("keepalive timed out: nothing received for")
        bridge.wait_for_event("mqtt.subscribed", timeout=20, since=mark)
        assert bridge.stop() == 0
