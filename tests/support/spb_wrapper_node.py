"""An edge node and one device published by ``mqtt-spb-wrapper``, a Sparkplug B
implementation the project did not write.  Runs in a virtualenv of its own
(the package pins paho-mqtt 1.6 and protobuf 3.20), so it imports nothing of
the project: ``python spb_wrapper_node.py HOST PORT GROUP NODE DEVICE COUNT``.

It connects the node and the device, publishes their births, COUNT data
messages from the device, then disconnects the device (DDEATH) and the node
(NDEATH), and prints ``done``.
"""

import sys
import time

from mqtt_spb_wrapper import MqttSpbEntityDevice, MqttSpbEntityEdgeNode


def main() -> None:
    host, port, group, node_name, device_name, count = sys.argv[1:7]
    node = MqttSpbEntityEdgeNode(spb_group_name=group, spb_eon_name=node_name)
    node.attributes.set_value("description", "bench gateway")
    node.data.set_value("uptime_s", 1)
    device = MqttSpbEntityDevice(
        spb_group_name=group, spb_eon_name=node_name, spb_eon_device_name=device_name
    )
    device.attributes.set_value("serial", "SN-0001")
    device.data.set_value("temperature", 20.5)
    device.data.set_value("running", True)
    for entity in (node, device):
        if not entity.connect(host, int(port)):
            raise SystemExit(f"cannot connect to {host}:{port}")
        entity.publish_birth(qos=1)
    for n in range(int(count)):
        device.data.set_value("temperature", 21.0 + n)
        device.data.set_value("running", n % 2 == 0)
        device.publish_data(qos=1)
    for entity in (node, device):
        # The library has no flush: wait until paho holds no unacknowledged
        # QoS 1 message (its queue of them), with a deadline.
        deadline = time.monotonic() + 10
        while entity._mqtt._out_messages and time.monotonic() < deadline:
            time.sleep(0.01)
    device.disconnect()
    node.disconnect()
    print("done", flush=True)


if __name__ == "__main__":
    main()
