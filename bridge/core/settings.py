"""The configuration's schema: every setting as a typed msgspec Struct.

This is what the core and every other part read.  Reading it from files (the
includes, the environment overrides, the error paths, the redaction for the
log) is :mod:`bridge.config_loader`, which only the application uses; the
schema stays here, in the core, so that a plan is compiled from data alone.

Why msgspec Structs: unknown keys are rejected (``forbid_unknown_fields``), every
field has a type and a default, and a decode error already names the path of the
bad field (``$.mappings[1].kafka.key``).  What the types cannot say (a template
naming a segment the topic filter does not have, a time zone that does not exist)
is checked afterwards by :func:`bridge.core.plan.compile_mapping`, which reports
every problem at once, each prefixed with its path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for every config table: unknown keys are an error, not ignored."""


# Ranges of numeric settings.  Every number the daemon reads has one, checked
# while decoding, so a value that would misbehave only later (a negative
# back-off that crashes at the first failed connect, a ping interval of 0 that
# floods idle clients) is refused with its path before anything starts.  The
# upper bounds also keep out TOML's ``inf``.  Ranges that depend on other
# settings are checked in :mod:`bridge.core.plan` and :mod:`bridge.runtime`.
#: A count of things that must exist at least once (queues, batches, entries).
Count = Annotated[int, Meta(ge=1, le=2**31 - 1)]
#: A count where 0 is meaningful (0 connections per tenant: the stream is closed).
Amount = Annotated[int, Meta(ge=0, le=2**31 - 1)]
#: A byte size.
Bytes = Annotated[int, Meta(ge=1, le=2**62)]
#: A wait in seconds that must be positive (intervals, timeouts, back-offs).
Seconds = Annotated[float, Meta(gt=0, le=86_400)]
#: A tolerance in seconds that may be zero.
Slack = Annotated[float, Meta(ge=0, le=86_400)]
#: Milliseconds librdkafka takes as a positive int32.
Millis = Annotated[int, Meta(ge=1, le=2**31 - 1)]
#: A Kafka consumer group's session timeout (librdkafka's range).
SessionMillis = Annotated[int, Meta(ge=1, le=3_600_000)]
#: A reconnect back-off: never zero, so a broker that refuses is not hammered.
Backoff = Annotated[float, Meta(ge=0.01, le=3600)]


# --------------------------------------------------------------------------- sources
class Source(_Section):
    """Where a value comes from: exactly one of a topic segment, a payload field
    path (``data.DEVICE_ID``) or a constant.  ``case`` folds text after extraction.
    """

    segment: str | None = None
    field: str | None = None
    const: str | None = None
    case: Literal["keep", "lower", "upper"] = "keep"


class TimeRule(_Section):
    """Where the event time comes from and how it is written.

    ``format`` is ``auto`` (ISO-8601 with an offset, or epoch milliseconds),
    ``iso``, ``epoch_s``, ``epoch_ms``, or a ``strftime`` pattern read in the
    time zone ``tz``.  With no ``field`` (``field = ""``: TOML has no null) or
    a missing value and ``required`` false, the time the bridge received the
    message is used.
    """

    field: str | None = "ts"
    format: str = "auto"
    tz: str = "UTC"
    required: bool = False


class FieldRule(_Section):
    """One declared metric read from a payload field, with its coercion.

    ``type`` is the metric type of the clean record.  Strings are coerced:
    numeric strings (``"+20.65"``) to numbers; for ``bool`` the words in
    ``true``/``false`` (compared case-insensitively); for ``str`` an optional
    ``enum`` of allowed values.
    """

    field: str
    type: Literal["numeric", "bool", "str"] = "numeric"
    true: list[str] = msgspec.field(default_factory=lambda: ["true", "on", "yes", "1"])
    false: list[str] = msgspec.field(default_factory=lambda: ["false", "off", "no", "0"])
    enum: list[str] | None = None
    unit: str | None = None
    required: bool = True


class SingleRule(_Section):
    """One reading per message: the metric's name comes from a segment or field,
    its value from ``value`` (coerced to ``type``)."""

    name: Source
    value: str = "value"
    type: Literal["numeric", "bool", "str", "auto"] = "auto"
    unit: Source | None = None
    quality: Source | None = None


class PayloadRules(_Section):
    """How a payload becomes records.  The defaults are the ``metrics`` object shape
    of ``tenant/{tenant}/device/{device}/telemetry``.

    ``format`` is ``json``, or ``sparkplug_b`` for Sparkplug B protobuf payloads
    (see the mapping's ``sparkplug`` table and docs/mappings.md): then tenant and
    device come from the Sparkplug topic (segments ``group``, ``edge_node``,
    ``sparkplug_device``, ``message_type``, ``tenant`` = the group, ``device`` =
    ``<edge node>/<device>`` or the edge node), metric names and times from the
    payload, and the JSON-only rules (fields, single, metrics_object,
    device_field, schema_version_field, ts, event_id, quality) are not used.

    Metrics come from exactly one of: ``metrics_object`` (a path to an object of
    name -> value, the default ``metrics``), ``fields`` (declared metrics) or
    ``single`` (one reading per message).

    ``device_field`` (a payload claim that must equal the resolved device) and
    ``schema_version_field`` are switched off with ``""``, since TOML has no
    null; without a schema version field every message is version 1.
    """

    format: Literal["json", "sparkplug_b"] = "json"
    tenant: Source = msgspec.field(default_factory=lambda: Source(segment="tenant"))
    device: Source = msgspec.field(default_factory=lambda: Source(segment="device"))
    device_field: str | None = "device"
    schema_version_field: str | None = "schema_version"
    schema_versions: list[int] = msgspec.field(default_factory=lambda: [1])
    ts: TimeRule = msgspec.field(default_factory=TimeRule)
    event_id: Source | None = None
    quality: Source | None = None
    metrics_object: str | None = None
    fields: dict[str, FieldRule] = msgspec.field(default_factory=dict)
    single: SingleRule | None = None


class MqttSide(_Section):
    """The MQTT side of a mapping: the filter with ``{named}`` segments."""

    topic: str = "tenant/{tenant}/device/{device}/telemetry"
    qos: Literal[0, 1] = 1
    shared_group: str | None = None


class KafkaSide(_Section):
    """The Kafka side of a mapping: target topics, key template, extra headers.

    ``key`` and ``headers`` are templates of the topic's ``{segments}``,
    ``{tenant}`` and ``{device}``; a header may also use ``{mqtt_qos}`` (0, 1
    or 2) and ``{mqtt_retain}`` (true or false) of the MQTT message.

    ``clean_enabled = false`` makes a raw-only (pass-through) mapping: every
    message goes to ``raw_topic`` as it came, without reading the payload, so
    nothing in it is judged and there are no clean records; tenant and device
    must then come from topic segments or constants.
    """

    clean_topic: str = "telemetry.clean"
    clean_enabled: bool = True
    raw_topic: str = "telemetry.raw"
    raw_enabled: bool = True
    dead_letter_topic: str = "telemetry.dlq"
    key: str = "{tenant}:{device}"
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class DedupSettings(_Section):
    """Drop a message whose event id was seen within ``window_s``; at most
    ``max_entries`` ids are remembered (oldest evicted first)."""

    window_s: float = 60.0
    max_entries: int = 100_000


class SparkplugSettings(_Section):
    """For ``payload.format = "sparkplug_b"`` only.  ``events_topic`` gets a record
    ``{"tenant", "device_serial_id", "event": "online"|"offline", "ts"}`` when an
    edge node or device is born or dies.  With ``rebirth`` the bridge publishes an
    NCMD ``Node Control/Rebirth`` to a node whose messages it cannot resolve (an
    unknown alias, a seq gap, data before any birth), at most once per
    ``rebirth_interval_s`` per node; the bridge's MQTT user needs the right to
    publish to ``spBv1.0/<group>/NCMD/<edge node>``."""

    events_topic: str = "telemetry.events"
    rebirth: bool = False
    rebirth_interval_s: float = 30.0


class Mapping(_Section):
    """One MQTT topic family to Kafka."""

    name: str = "telemetry"
    mqtt: MqttSide = msgspec.field(default_factory=MqttSide)
    kafka: KafkaSide = msgspec.field(default_factory=KafkaSide)
    payload: PayloadRules = msgspec.field(default_factory=PayloadRules)
    dedup: DedupSettings | None = None
    sparkplug: SparkplugSettings = msgspec.field(default_factory=SparkplugSettings)


class MappingFile(_Section):
    """What an included mapping file may hold."""

    mappings: list[Mapping] = msgspec.field(default_factory=list)


# --------------------------------------------------------------------------- catalog
class AlarmRule(_Section):
    """A threshold on a numeric metric: ``above``, ``below`` or ``outside`` (a
    band ``low``..``high``), optionally sustained for ``for_s`` seconds."""

    kind: Literal["above", "below", "outside"]
    threshold: float | None = None
    low: float | None = None
    high: float | None = None
    for_s: float = 0.0


class MetricSpec(_Section):
    """A metric catalog entry (``[metrics.temperature]``)."""

    type: Literal["numeric", "bool", "str"] = "numeric"
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    alarms: list[AlarmRule] = msgspec.field(default_factory=list)


class DeviceSpec(_Section):
    """A device registry entry (``[devices.<tenant>.<device>]``).  ``groups``
    name the groups a stream client can select it by (``?group=pumps``)."""

    active: bool = True
    metrics: list[str] | None = None
    groups: list[str] = msgspec.field(default_factory=list)


# --------------------------------------------------------------------------- adapters
class TlsSettings(_Section):
    """TLS to the MQTT broker: the CA that signed the broker's certificate, and
    for mutual TLS the client certificate and key (PEM files).  ``insecure``
    skips the host name check: for tests only."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


class MqttSettings(_Section):
    """The MQTT client.  ``embedded`` decides whether an amqtt broker is started
    when nothing answers at ``url``: ``auto`` (only for the default local URL),
    ``always`` or ``never``.  ``receive_maximum`` bounds the messages waiting
    for Kafka: the broker is asked to send no more unacknowledged (MQTT 5),
    and the bridge reads nothing more while that many wait, so its memory
    stays bounded with any broker and at QoS 0 too.  It is the window of a
    bandwidth-delay product: a rate above ``receive_maximum`` / (Kafka's
    round trip + ``kafka.linger_ms``) waits on acknowledgements, not on the
    CPU (2000: 200,000 msgs/s at 10 ms in all, 40,000 at 50 ms)."""

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "edge-bridge"
    protocol: Literal["3.1.1", "5"] = "5"
    username: str | None = None
    password: str | None = None
    keepalive_s: Annotated[int, Meta(ge=1, le=65_535)] = 30
    session_expiry_s: Annotated[int, Meta(ge=0, le=2**32 - 1)] = 86_400
    receive_maximum: Annotated[int, Meta(ge=1, le=65_535)] = 2000
    tls: TlsSettings | None = None
    embedded: Literal["auto", "always", "never"] = "auto"
    reconnect_min_s: Backoff = 0.5
    reconnect_max_s: Backoff = 30.0


class KafkaSettings(_Section):
    """The Kafka producer.  ``properties`` passes any librdkafka setting through
    (``security.protocol``, ``sasl.mechanism``, ``ssl.ca.location`` ...).
    ``shutdown_flush_s``: at a graceful stop, how long to wait for Kafka to
    acknowledge the records in flight before the rest go to the spool (or stay
    unacknowledged, for the broker to deliver again); keep it well below the
    service manager's stop timeout (``TimeoutStopSec=45`` in the shipped unit).
    ``compression``: ``none`` by default, for a Kafka on the same host or LAN,
    where compressing saves nothing and decompressing the batches the stream
    reads back left 80 MiB of fragmented heap (docs/benchmarks.md); across a
    WAN set ``lz4`` or ``zstd``."""

    bootstrap: str = "127.0.0.1:9092"
    linger_ms: Annotated[int, Meta(ge=0, le=900_000)] = 5
    compression: str = "none"
    queue_max_messages: Annotated[int, Meta(ge=1, le=2_147_483_647)] = 200_000
    delivery_timeout_ms: Millis = 15_000
    shutdown_flush_s: Annotated[float, Meta(ge=0.1, le=600)] = 10.0
    properties: dict[str, str] = msgspec.field(default_factory=dict)


class LimitSettings(_Section):
    """Bounds on what one MQTT message may carry, and on the state kept per device.

    ``max_json_depth``: arrays and objects nested deeper than this are refused
    (``too_deep``) before the payload is decoded.  ``identifier_pattern``: a
    regular expression every tenant, device and ``{named}`` topic segment must
    match entirely (``invalid_topic``, or ``invalid_field`` when the tenant or
    device comes from a payload field); the default allows ASCII letters,
    digits, ``.``, ``_`` and ``-``, so a key such as ``{tenant}:{device}``
    stays unambiguous.  ``max_user_property_bytes``: MQTT 5 user properties
    carried into Kafka headers, names and values, per message; the rest are
    not carried.  ``max_alarm_series``: alarm rule states kept, one per
    (tenant, device, metric, rule), the least recently seen forgotten first.
    """

    max_payload_bytes: Annotated[int, Meta(ge=1, le=268_435_455)] = 65_536
    max_string_length: Count = 256
    max_segment_length: Count = 128
    max_metrics: Count = 256
    max_json_depth: int = 64
    identifier_pattern: str = "[A-Za-z0-9._-]+"
    max_user_property_bytes: Amount = 4096
    max_alarm_series: int = 100_000


class LogSettings(_Section):
    """``format``: ``auto`` writes JSON lines unless stderr is a terminal.
    ``level``: debug, info, warning or error."""

    format: Literal["auto", "json", "console"] = "auto"
    level: str = "info"


class StreamSettings(_Section):
    """The live stream (WebSocket and SSE) fed from Kafka.

    ``source``: ``auto`` reads ``topics`` from Kafka and falls back to the
    records this daemon ingests itself while Kafka is not reachable (edge-local
    mode); ``kafka`` never falls back; ``local`` never starts a Kafka consumer.
    ``group_id`` unset means a group of its own per daemon instance, so every
    instance sees every record.  A client whose queue of ``client_queue`` events
    is full loses the oldest and is told how many; one that lost more than
    ``max_lag_drops`` since it last caught up is disconnected (see
    docs/streaming.md).  ``consumer_properties`` are librdkafka settings for the
    stream's consumers only, on top of ``kafka.properties``.
    """

    topics: list[str] = msgspec.field(default_factory=lambda: ["telemetry.clean"])
    source: Literal["auto", "kafka", "local"] = "auto"
    group_id: str | None = None
    session_timeout_ms: SessionMillis = 6000
    consume_batch: Annotated[int, Meta(ge=1, le=1_000_000)] = 500
    consumer_properties: dict[str, str] = msgspec.field(default_factory=dict)
    max_per_tenant: Amount = 10
    ping_interval_s: Annotated[float, Meta(ge=1, le=3600)] = 30.0
    client_queue: Count = 1000
    max_lag_drops: Amount = 10_000
    slow_client_grace_s: Slack = 10.0
    replay_timeout_s: Seconds = 30.0
    replay_max_events: Count = 100_000
    replay_concurrency: Annotated[int, Meta(ge=1, le=1000)] = 4
    allow_origins: list[str] = msgspec.field(default_factory=list)


class AuthSettings(_Section):
    """JWT verification for the stream.  HS256 with ``jwt_secret`` (or the
    ``EDGE_BRIDGE_JWT_SECRET`` environment variable), or RS256/ES256 with the PEM
    public key in ``public_key_file``, or the keys of an identity provider: a
    JWKS file (``jwks_file``) or URL (``jwks_url``, fetched again after
    ``jwks_refresh_s`` or when a token names an unknown ``kid``, at most once
    per ``jwks_min_interval_s``; while it cannot be reached the last key set
    fetched stays in use)."""

    jwt_secret: str | None = None
    public_key_file: str | None = None
    jwks_file: str | None = None
    jwks_url: str | None = None
    jwks_refresh_s: Annotated[float, Meta(ge=1, le=86_400)] = 300.0
    jwks_min_interval_s: Slack = 30.0
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["HS256"])
    leeway_s: Slack = 0.0
    audience: str | None = None
    issuer: str | None = None


class HealthSettings(_Section):
    """Health judged by progress, not only by connection state.  Past
    ``stalled_after_s`` seconds with records waiting and no Kafka
    acknowledgement, or with a spooled record that old, ``/readyz`` answers 503
    with a ``stalled`` reason; 0 turns the check off."""

    stalled_after_s: Slack = 300.0


class ConsoleSettings(_Section):
    """The console page at ``/`` and its JSON endpoints (docs/console.md).
    ``first_run_link``: with no auth key configured and a loopback listen
    address, ``edge-bridge run`` keeps a random secret in its state directory
    and prints a sign-in link (docs/security.md)."""

    enabled: bool = True
    first_run_link: bool = True


class SpoolSettings(_Section):
    """The disk store-and-forward spool.

    ``required``: with ``false`` (the default) a spool that cannot be opened at
    start (disk full, read-only, missing permissions) is logged as an error and
    the bridge runs without it, sending records straight to Kafka and trying to
    open it again with back-off; ``true`` refuses to start instead."""

    path: str = "/var/lib/edge-bridge/spool"
    max_bytes: Bytes = 1 << 30
    segment_bytes: Bytes = 16 << 20
    fsync_interval_ms: int = 50
    when_full: Literal["backpressure", "drop_oldest"] = "backpressure"
    enabled: bool = True
    required: bool = False


class CommandValue(_Section):
    """Where a placeholder of a command's MQTT topic comes from: a Kafka record
    header or a field of the record's JSON value."""

    header: str | None = None
    field: str | None = None


class CommandMapping(_Section):
    """Kafka to MQTT: records of ``kafka_topic`` published to ``mqtt_topic``.

    Each ``{placeholder}`` of ``mqtt_topic`` is read from ``values`` when
    declared there, otherwise from the header of the same name, otherwise from
    the field of the same name in the JSON value.  The published payload is the
    record's value unchanged, or its field ``payload_field``.  The Kafka offset is
    committed only after the MQTT broker acknowledged the publish (QoS 1).
    """

    name: str = "commands"
    kafka_topic: str = "device.commands"
    mqtt_topic: str = "tenant/{tenant}/device/{device}/command"
    qos: Literal[0, 1] = 1
    retain: bool = False
    values: dict[str, CommandValue] = msgspec.field(default_factory=dict)
    payload_field: str | None = None
    headers_as_user_properties: bool = True
    dead_letter_topic: str = "device.commands.dlq"
    group_id: str = "edge-bridge-commands"
    start_from: Literal["latest", "earliest"] = "latest"
    session_timeout_ms: SessionMillis = 6000


# --------------------------------------------------------------------------- stream endpoints
class StreamSource(_Section):
    """Where an endpoint's events come from, and how a Kafka record is read.

    ``read``: ``clean`` (the bridge's own clean records, one event per record),
    ``mapping`` (the raw topic: each record is one MQTT message, read again
    through the ingest mapping named by ``mapping``, so an event carries every
    metric of the message and its MQTT topic) or ``json`` (any JSON record:
    ``tenant``, ``device``, ``ts`` and the metrics are found with the same
    rules as a mapping's payload; a record without a device is skipped and
    counted).  Endpoints with the same ``topics``, ``group_id`` and ``start``
    share one Kafka consumer.  ``start``: where a new consumer begins when the
    group has no committed offset.
    """

    topics: list[str] = msgspec.field(default_factory=lambda: ["telemetry.clean"])
    read: Literal["clean", "mapping", "json"] = "clean"
    mapping: str | None = None
    tenant: Source = msgspec.field(default_factory=lambda: Source(const="default"))
    device: Source | None = None
    ts: TimeRule | None = None
    metrics_object: str | None = None
    fields: dict[str, FieldRule] = msgspec.field(default_factory=dict)
    group_id: str | None = None
    start: Literal["latest", "earliest"] = "latest"


class StreamEnvelope(_Section):
    """What a client receives per event.

    ``update``: today's ``{"event_id", "type": "telemetry.update",
    "schema_version", "sent_at", "data": {clean record}}`` (``read = "clean"``
    only).  ``message``: ``template``, a JSON object whose string values
    ``"{tenant}"``, ``"{device}"``, ``"{metrics}"`` (only the metrics the client
    asked for), ``"{ts}"``, ``"{topic}"`` (the MQTT topic), ``"{event_id}"`` and
    ``"{sent_at}"`` are replaced by those values; an event with none of the
    requested metrics is not sent.  ``passthrough``: the record's JSON as it is.
    """

    kind: Literal["update", "message", "passthrough"] = "update"
    template: dict[str, Any] | None = None


class StreamFilters(_Section):
    """The query parameters a client filters with, each a list of accepted
    names (aliases); every value may be a comma-separated list
    (``?device_ids=A,B``).  An empty list switches the filter off."""

    device: list[str] = msgspec.field(default_factory=lambda: ["device"])
    metric: list[str] = msgspec.field(default_factory=lambda: ["metric"])
    group: list[str] = msgspec.field(default_factory=lambda: ["group"])
    tenant: list[str] = msgspec.field(default_factory=lambda: ["tenant"])


class StreamActions(_Section):
    """The JSON messages a WebSocket client sends to change its filters.

    ``field`` names the action; the four actions' names are configurable, and
    so are the fields they read (``device_fields``: one id or a list each).
    ``replies``: ``bridge`` answers with the whole new filter set, ``echo``
    repeats what the client sent (``{"type": "subscribed", "device_id": X}``).
    ``unknown`` is the error message for an unknown action (``{action}`` is
    its name).
    """

    enabled: bool = True
    field: str = "action"
    subscribe: str = "subscribe"
    unsubscribe: str = "unsubscribe"
    set_metrics: str = "set_metrics"
    clear_filters: str = "clear_filters"
    device_fields: list[str] = msgspec.field(default_factory=lambda: ["device", "devices"])
    metric_fields: list[str] = msgspec.field(default_factory=lambda: ["metrics"])
    group_fields: list[str] = msgspec.field(default_factory=lambda: ["group", "groups"])
    replies: Literal["bridge", "echo"] = "bridge"
    subscribed: str = "subscribed"
    unsubscribed: str = "unsubscribed"
    metrics_updated: str = "metrics_updated"
    filters_cleared: str = "filters_cleared"
    error: str = "error"
    unknown: str = "Unknown action: {action}"


class StreamKeepalive(_Section):
    """What is sent after ``interval_s`` without events: on a WebSocket a JSON
    ``{"type": "ping", "ts"}`` message (``json``), a WebSocket ping frame
    (``ping``) or nothing; on SSE a comment line (``comment``), the JSON ping
    as an event (``json``) or nothing, every ``sse_interval_s`` (default
    ``interval_s``)."""

    interval_s: Annotated[float, Meta(ge=1, le=3600)] = 30.0
    websocket: Literal["json", "ping", "none"] = "json"
    sse_interval_s: Annotated[float, Meta(ge=1, le=3600)] | None = None
    sse: Literal["comment", "json", "none"] = "comment"


class RefusalCodes(_Section):
    """A WebSocket close code per reason a connection is refused: ``token``
    (missing or invalid), ``role`` (no accepted role), ``tenant`` (no tenant,
    or one not granted), ``limit`` (the tenant's connections are used up),
    ``request`` (a filter that cannot be applied)."""

    token: int = 4001
    role: int = 4003
    tenant: int = 4003
    limit: int = 4029
    request: int = 4400


class RefusalStatuses(_Section):
    """The HTTP status (SSE) per reason a connection is refused, as in
    :class:`RefusalCodes`."""

    token: int = 401
    role: int = 403
    tenant: int = 403
    limit: int = 429
    request: int = 400


class StreamIdentity(_Section):
    """Where a token's role and tenant are found.

    ``role_claims`` and ``tenant_claims`` are dot paths into the claims, tried
    in order (``realm_access.roles``); a role claim may be one string or a
    list; a tenant claim a string, an object (its first key) or a list (its
    first string).  A token role in ``admin_roles`` sees every tenant (or the
    one it asks for), one in ``client_roles`` its own tenant; any other is
    refused.  ``without_tenant``: what a client token without a tenant gets,
    refused or every tenant (one organisation).  ``tenant``: a single-tenant
    deployment: every connection sees this tenant, whatever the token says.
    """

    role_claims: list[str] = msgspec.field(default_factory=lambda: ["role"])
    tenant_claims: list[str] = msgspec.field(default_factory=lambda: ["tenant"])
    admin_roles: list[str] = msgspec.field(default_factory=lambda: ["admin"])
    client_roles: list[str] = msgspec.field(default_factory=lambda: ["client"])
    without_tenant: Literal["refuse", "all"] = "refuse"
    tenant: str | None = None
    close_codes: RefusalCodes = msgspec.field(default_factory=RefusalCodes)
    http_statuses: RefusalStatuses = msgspec.field(default_factory=RefusalStatuses)


class StreamEndpoint(_Section):
    """One stream contract (``[[streams]]``): paths, source, envelope, filters,
    live actions, welcome, keepalive, identity.  Without any ``[[streams]]``
    the built-in endpoints of ``[stream]`` are served; with some, only these.

    ``auth`` must be stated: ``jwt`` (keys from ``[auth]``) or ``none`` (every
    client is an admin of ``identity.tenant``, or of every tenant: only behind
    an authenticating proxy; logged as a warning at start).  ``welcome``: the
    first message, a template like ``envelope.template`` with ``"{tenant}"``,
    ``"{role}"``, ``"{devices}"``, ``"{metrics}"``, ``"{groups}"`` and
    ``"{filters}"``; unset, today's ``connected`` message; ``send_welcome =
    false`` sends none.  ``status``: the body of ``status_path``, a template
    with ``"{total_connections}"``, ``"{max_per_tenant}"``, ``"{per_tenant}"``,
    ``"{kafka_state}"`` and ``"{malformed_records}"``; unset, the endpoint's
    whole status.  ``sse_ids``: each SSE
    event's id is the Kafka ``cursor`` (resumable) or a per-connection
    ``counter``.
    """

    name: str
    auth: Literal["jwt", "none"]
    websocket_path: str | None = None
    sse_path: str | None = None
    status_path: str | None = None
    status: dict[str, Any] | None = None
    max_per_tenant: int = 10
    sse_ids: Literal["cursor", "counter"] = "cursor"
    send_welcome: bool = True
    welcome: dict[str, Any] | None = None
    source: StreamSource = msgspec.field(default_factory=StreamSource)
    envelope: StreamEnvelope = msgspec.field(default_factory=StreamEnvelope)
    filters: StreamFilters = msgspec.field(default_factory=StreamFilters)
    actions: StreamActions = msgspec.field(default_factory=StreamActions)
    keepalive: StreamKeepalive = msgspec.field(default_factory=StreamKeepalive)
    identity: StreamIdentity = msgspec.field(default_factory=StreamIdentity)


class Config(_Section):
    """The whole daemon configuration (``edge-bridge.toml``)."""

    include: list[str] = msgspec.field(default_factory=list)
    listen: str = "127.0.0.1:8080"
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    stream: StreamSettings = msgspec.field(default_factory=StreamSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    spool: SpoolSettings = msgspec.field(default_factory=SpoolSettings)
    health: HealthSettings = msgspec.field(default_factory=HealthSettings)
    console: ConsoleSettings = msgspec.field(default_factory=ConsoleSettings)
    alarms_topic: str = "telemetry.alarms"
    # Where state that must survive a restart lives (Sparkplug B alias tables);
    # empty: the directory holding the spool (systemd's $STATE_DIRECTORY).
    state_dir: str = ""
    metrics: dict[str, MetricSpec] = msgspec.field(default_factory=dict)
    devices: dict[str, dict[str, DeviceSpec]] = msgspec.field(default_factory=dict)
    mappings: list[Mapping] = msgspec.field(default_factory=list)
    commands: list[CommandMapping] = msgspec.field(default_factory=list)
    streams: list[StreamEndpoint] = msgspec.field(default_factory=list)


@dataclass(frozen=True)
class LoadedConfig:
    """A decoded config and, for each of its mappings, the file it came from and
    its index there, so that semantic errors can point at the right place."""

    config: Config
    origins: list[tuple[str, int]]
    #: The main config file, named in errors about its own tables.
    main: str = "built-in defaults"

    def mapping_path(self, index: int) -> str:
        source, local = self.origins[index]
        return f"{source}: mappings[{local}]"
