"""What a Sparkplug B host application must remember between messages: the
alias tables of the last births, each edge node's sequence number and birth/death
sequence (``bdSeq``), and which nodes and devices are online.  Pure: a decoded
payload and the current state in, readings, events and a rebirth wish out; the
state changes in place.  Saving and loading it is the adapter's job
(:func:`SparkplugState.snapshot` and :func:`SparkplugState.restore` give bytes).

Rules, from Sparkplug 3.0:

* NBIRTH and DBIRTH carry every metric with its name, datatype and (optionally)
  alias; NDATA and DDATA may name a metric by alias only.  A DATA metric whose
  alias no birth explained is refused (``unknown_alias``) and the node is asked
  to publish its births again.
* ``seq`` counts 0..255 and wraps, per edge node, over every message it sends
  except NDEATH.  A message whose seq is not the previous one plus one is a gap:
  counted, and the node is asked for a rebirth; the message is still used.
* NDEATH whose ``bdSeq`` matches the last NBIRTH's marks the node and all its
  devices offline (a stale NDEATH, from a session the node already replaced, is
  counted and ignored); DDEATH marks one device offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from bridge.core.coerce import InputRejected
from bridge.core.records import EventKind, MetricType, Value
from bridge.core.sparkplug import (
    BD_SEQ_METRIC,
    SparkplugTopic,
    datatype_name,
    metric_name,
    metric_value,
    timestamp_ms,
)
from bridge.core.sparkplug_b_pb2 import Payload

# Nodes plus devices remembered at most: a flood of births under made-up names
# must not grow the state (and its file) without bound.
MAX_ENTITIES = 100_000
SEQ_MODULO = 256
_CONTROL_PREFIX = "Node Control/"

# One metric read from a message: name, value, type, event time (ms).
SparkplugReading = tuple[str, Value, MetricType, int]


class AliasTable:
    """A birth's metrics: alias -> (name, datatype), and name -> datatype."""

    __slots__ = ("by_alias", "by_name")

    def __init__(self) -> None:
        self.by_alias: dict[int, tuple[str, int]] = {}
        self.by_name: dict[str, int] = {}

    def add(self, name: str, datatype: int, alias: int | None) -> None:
        self.by_name[name] = datatype
        if alias is not None:
            self.by_alias[alias] = (name, datatype)

    def rows(self) -> list[tuple[str, int, int | None]]:
        aliases = {name: alias for alias, (name, _) in self.by_alias.items()}
        return [(name, dt, aliases.get(name)) for name, dt in self.by_name.items()]


class NodeState:
    __slots__ = ("bd_seq", "last_rebirth_ms", "online", "seq", "table")

    def __init__(self) -> None:
        self.bd_seq: int | None = None
        self.seq: int | None = None
        self.online = False
        self.table = AliasTable()
        self.last_rebirth_ms: int | None = None


class DeviceState:
    __slots__ = ("online", "table")

    def __init__(self) -> None:
        self.online = False
        self.table = AliasTable()


@dataclass
class SparkplugCounters:
    """Plain ints, read by /metrics at scrape time."""

    seq_gaps: int = 0
    null_metrics: int = 0
    dead_device_data: int = 0
    stale_deaths: int = 0
    rebirths_requested: int = 0


@dataclass
class Resolved:
    """What one message meant.  ``events`` are (device or None for the node
    itself, ``online``/``offline``, time ms); ``rebirth`` says the node should be
    asked to publish its births again (already rate-limited); ``gap`` is the
    (expected, received) seq of a gap."""

    readings: list[SparkplugReading | InputRejected] = field(default_factory=list)
    events: list[tuple[str | None, EventKind, int]] = field(default_factory=list)
    rebirth: bool = False
    gap: tuple[int, int] | None = None


class _Row(msgspec.Struct, array_like=True):
    name: str
    datatype: int
    alias: int | None


class _NodeSnapshot(msgspec.Struct, kw_only=True):
    group: str
    edge_node: str
    bd_seq: int | None
    seq: int | None
    online: bool
    metrics: list[_Row]


class _DeviceSnapshot(msgspec.Struct, kw_only=True):
    group: str
    edge_node: str
    device: str
    online: bool
    metrics: list[_Row]


class _Snapshot(msgspec.Struct, kw_only=True):
    version: int = 1
    nodes: list[_NodeSnapshot]
    devices: list[_DeviceSnapshot]


def _rows(table: AliasTable) -> list[_Row]:
    return [_Row(name, dt, alias) for name, dt, alias in table.rows()]


def _table(rows: list[_Row]) -> AliasTable:
    table = AliasTable()
    for row in rows:
        table.add(row.name, row.datatype, row.alias)
    return table


class SparkplugState:
    """Every edge node and device seen, by (group, edge node[, device])."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], NodeState] = {}
        self.devices: dict[tuple[str, str, str], DeviceState] = {}
        self.counters = SparkplugCounters()
        self.max_entities = MAX_ENTITIES
        self._max_string = 256  # limits.max_string_length, given with each message
        # Set when births or deaths changed what a restart must find again.
        self.dirty = False

    # ------------------------------------------------------------------ entry
    def handle(
        self,
        topic: SparkplugTopic,
        payload: Payload,
        now_ms: int,
        max_string: int,
        rebirth_interval_ms: int | None,
    ) -> Resolved:
        """Apply one decoded message.  ``rebirth_interval_ms`` is None when the
        mapping may not publish commands, else the least time between two
        rebirth requests to one node."""
        resolved = Resolved()
        self._max_string = max_string
        message_ms = _message_ms(payload, now_ms)
        kind = topic.message_type
        key = topic.node_key
        node = self.nodes.get(key)
        if kind == "NBIRTH":
            self._node_birth(key, node, payload, message_ms, resolved)
            return resolved
        if kind == "NDEATH":
            if node is not None:
                self._node_death(key, node, payload, message_ms, resolved)
            return resolved
        if kind not in ("NDATA", "DBIRTH", "DDATA", "DDEATH"):
            return resolved  # NCMD, DCMD, STATE: not telemetry
        wants_rebirth = False
        if node is None:
            node = self._new_node(key)
            wants_rebirth = True  # data from a node whose birth this host never saw
        wants_rebirth |= self._sequence(node, payload, resolved)
        if kind == "NDATA":
            wants_rebirth |= self._data(node.table, payload, message_ms, resolved)
        else:
            wants_rebirth |= self._device(topic, node, payload, message_ms, resolved)
        if wants_rebirth and rebirth_interval_ms is not None:
            last = node.last_rebirth_ms
            if last is None or now_ms - last >= rebirth_interval_ms:
                node.last_rebirth_ms = now_ms
                resolved.rebirth = True
                self.counters.rebirths_requested += 1
        return resolved

    # ------------------------------------------------------------------ steps
    def _new_node(self, key: tuple[str, str]) -> NodeState:
        self._check_room()
        node = self.nodes[key] = NodeState()
        return node

    def _check_room(self) -> None:
        if len(self.nodes) + len(self.devices) >= self.max_entities:
            raise InputRejected(
                "too_many_devices",
                f"the bridge already tracks {self.max_entities} Sparkplug nodes and devices",
            )

    def _node_birth(
        self, key: tuple[str, str], node: NodeState | None, payload: Payload, ts: int, out: Resolved
    ) -> None:
        if node is None:
            node = self._new_node(key)
        node.table = AliasTable()
        node.seq = payload.seq % SEQ_MODULO if payload.HasField("seq") else None
        node.bd_seq = _bd_seq(payload)
        self._birth(node.table, payload, ts, out)
        if not node.online:
            node.online = True
            out.events.append((None, "online", ts))
        self.dirty = True

    def _node_death(
        self, key: tuple[str, str], node: NodeState, payload: Payload, ts: int, out: Resolved
    ) -> None:
        bd_seq = _bd_seq(payload)
        if node.bd_seq is not None and bd_seq is not None and bd_seq != node.bd_seq:
            self.counters.stale_deaths += 1
            return
        if node.online:
            node.online = False
            out.events.append((None, "offline", ts))
        group, edge_node = key
        for (d_group, d_node, device), state in self.devices.items():
            if state.online and d_group == group and d_node == edge_node:
                state.online = False
                out.events.append((device, "offline", ts))
        node.seq = None
        self.dirty = True

    def _device(
        self, topic: SparkplugTopic, node: NodeState, payload: Payload, ts: int, out: Resolved
    ) -> bool:
        """DBIRTH, DDATA or DDEATH; returns whether a rebirth is wanted."""
        assert topic.device is not None
        key = (topic.group, topic.edge_node, topic.device)
        device = self.devices.get(key)
        kind = topic.message_type
        if device is None:
            if kind == "DDEATH":
                return True  # the death of a device never born here
            self._check_room()
            device = self.devices[key] = DeviceState()
        if kind == "DBIRTH":
            device.table = AliasTable()
            self._birth(device.table, payload, ts, out)
            if not device.online:
                device.online = True
                out.events.append((topic.device, "online", ts))
            self.dirty = True
            return False
        if kind == "DDEATH":
            if device.online:
                device.online = False
                out.events.append((topic.device, "offline", ts))
                self.dirty = True
            return False
        if not device.online or not node.online:
            # Never born here (its aliases are unknown: ask for births), or dead.
            self.counters.dead_device_data += 1
            if not device.table.by_name:
                self._data(device.table, payload, ts, out)
                return True
        return self._data(device.table, payload, ts, out)

    def _sequence(self, node: NodeState, payload: Payload, resolved: Resolved) -> bool:
        """Check and advance the node's seq; True on a gap."""
        if not payload.HasField("seq"):
            return False
        seq = payload.seq % SEQ_MODULO
        previous = node.seq
        node.seq = seq
        if previous is None:
            return False
        expected = (previous + 1) % SEQ_MODULO
        if seq == expected:
            return False
        self.counters.seq_gaps += 1
        resolved.gap = (expected, seq)
        return True

    def _birth(self, table: AliasTable, payload: Payload, ts: int, out: Resolved) -> None:
        readings = out.readings
        for metric in payload.metrics:
            name = metric_name(metric)
            if isinstance(name, InputRejected):
                readings.append(name)
                continue
            if not name:
                readings.append(InputRejected("invalid_metric_name", "a birth metric has no name"))
                continue
            if not metric.HasField("datatype"):
                readings.append(
                    InputRejected(
                        "unsupported_datatype", f"birth metric {name!r} has no datatype", name
                    )
                )
                continue
            table.add(name, metric.datatype, metric.alias if metric.HasField("alias") else None)
            if name == BD_SEQ_METRIC or name.startswith(_CONTROL_PREFIX):
                continue  # the protocol's own bookkeeping, not telemetry
            self._reading(metric, name, metric.datatype, ts, readings)

    def _data(self, table: AliasTable, payload: Payload, ts: int, out: Resolved) -> bool:
        """Resolve NDATA/DDATA metrics; True when an alias was unknown."""
        readings = out.readings
        unknown = False
        for metric in payload.metrics:
            named = metric_name(metric)
            if isinstance(named, InputRejected):
                readings.append(named)
                continue
            if named:
                name = named
                datatype = table.by_name.get(name)
            elif metric.HasField("alias"):
                entry = table.by_alias.get(metric.alias)
                if entry is None:
                    unknown = True
                    readings.append(
                        InputRejected(
                            "unknown_alias",
                            f"alias {metric.alias} is in no birth certificate seen for this"
                            " node or device (a rebirth is requested when the mapping allows)",
                            f"alias {metric.alias}",
                        )
                    )
                    continue
                name, datatype = entry
            else:
                readings.append(
                    InputRejected("invalid_metric_name", "a metric has no name or alias")
                )
                continue
            if metric.HasField("datatype"):
                datatype = metric.datatype
            if datatype is None:
                readings.append(
                    InputRejected(
                        "unsupported_datatype",
                        f"metric {name!r} has no datatype here nor in a birth certificate",
                        name,
                    )
                )
                continue
            self._reading(metric, name, datatype, ts, readings)
        return unknown

    def _reading(
        self,
        metric: Payload.Metric,
        name: str,
        datatype: int,
        message_ms: int,
        readings: list[SparkplugReading | InputRejected],
    ) -> None:
        if metric.is_null:
            self.counters.null_metrics += 1
            return
        try:
            value, metric_type = metric_value(metric, name, datatype, self._max_string)
        except InputRejected as refusal:
            readings.append(refusal)
            return
        ts = message_ms
        if metric.HasField("timestamp"):
            ts = timestamp_ms(metric.timestamp) or message_ms
        readings.append((name, value, metric_type, ts))

    # ------------------------------------------------------------------ persistence
    def snapshot(self) -> bytes:
        """Everything a restart needs, as JSON bytes (rebirth times are not kept)."""
        nodes = [
            _NodeSnapshot(
                group=group,
                edge_node=edge_node,
                bd_seq=node.bd_seq,
                seq=node.seq,
                online=node.online,
                metrics=_rows(node.table),
            )
            for (group, edge_node), node in self.nodes.items()
        ]
        devices = [
            _DeviceSnapshot(
                group=group,
                edge_node=edge_node,
                device=name,
                online=device.online,
                metrics=_rows(device.table),
            )
            for (group, edge_node, name), device in self.devices.items()
        ]
        return msgspec.json.encode(_Snapshot(nodes=nodes, devices=devices))

    @classmethod
    def restore(cls, data: bytes) -> SparkplugState:
        """The state a snapshot holds; ValueError with a sentence when it cannot
        be read (the caller starts empty and says so)."""
        try:
            snap = msgspec.json.decode(data, type=_Snapshot)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a Sparkplug state snapshot: {exc}") from None
        if snap.version != 1:
            raise ValueError(f"unknown Sparkplug state version {snap.version}")
        state = cls()
        for n in snap.nodes[:MAX_ENTITIES]:
            node = state.nodes[(n.group, n.edge_node)] = NodeState()
            node.bd_seq, node.seq, node.online = n.bd_seq, n.seq, n.online
            node.table = _table(n.metrics)
        for d in snap.devices[: MAX_ENTITIES - len(state.nodes)]:
            device = state.devices[(d.group, d.edge_node, d.device)] = DeviceState()
            device.online = d.online
            device.table = _table(d.metrics)
        return state

    def describe(self) -> dict[str, object]:
        """The alias tables in use, by ``<group>/<edge node>[/<device>]``."""
        out: dict[str, object] = {}
        for (group, edge_node), node in self.nodes.items():
            out[f"{group}/{edge_node}"] = _describe(node.table, node.online)
        for (group, edge_node, device), state in self.devices.items():
            out[f"{group}/{edge_node}/{device}"] = _describe(state.table, state.online)
        return out


def _describe(table: AliasTable, online: bool) -> dict[str, object]:
    return {
        "online": online,
        "metrics": [
            {"name": name, "datatype": datatype_name(dt), "alias": alias}
            for name, dt, alias in table.rows()
        ],
    }


def explain(state: SparkplugState) -> dict[str, object]:
    """For ``try-mapping``: the alias tables, and what each alias of a DATA
    message on each node's or device's topic would resolve to."""
    resolves: dict[str, dict[str, str]] = {}
    tables: list[tuple[tuple[str, str, str | None], AliasTable]]
    tables = [((g, n, None), node.table) for (g, n), node in state.nodes.items()]
    tables += [((g, n, d), device.table) for (g, n, d), device in state.devices.items()]
    for (group, edge_node, device), table in tables:
        topic = f"spBv1.0/{group}/{'DDATA' if device else 'NDATA'}/{edge_node}"
        topic += f"/{device}" if device else ""
        resolves[topic] = {
            f"alias {alias}": f"{name} ({datatype_name(dt)})"
            for alias, (name, dt) in sorted(table.by_alias.items())
        }
    return {"alias_tables": state.describe(), "data_would_resolve": resolves}


def birth_topic(topic: str) -> str:
    """The birth topic of the node or device a Sparkplug topic is about."""
    levels = topic.split("/")
    if len(levels) >= 4:
        levels[2] = "DBIRTH" if len(levels) == 5 else "NBIRTH"
    return "/".join(levels)


def _bd_seq(payload: Payload) -> int | None:
    for metric in payload.metrics:
        if metric.name == BD_SEQ_METRIC:
            field = metric.WhichOneof("value")
            if field in ("int_value", "long_value"):
                value: int = getattr(metric, field)
                return value
    return None


def _message_ms(payload: Payload, now_ms: int) -> int:
    if payload.HasField("timestamp"):
        return timestamp_ms(payload.timestamp) or now_ms
    return now_ms
