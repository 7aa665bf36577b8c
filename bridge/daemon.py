"""The daemon: every part of the bridge under one trio nursery.

Wiring, in start order:

1. signal handling (SIGTERM/SIGINT stop gracefully, a second one forces; SIGHUP
   reloads), opened first so no early signal is lost;
2. the embedded MQTT broker, when the config asks for it or nothing answers at
   the default local address;
3. the Kafka producer's delivery-report task;
4. the listen address: WebSocket and SSE stream, status, ``/metrics``,
   ``/healthz`` and ``/readyz`` (503 until the MQTT client is up), the console
   page and its endpoints (:mod:`bridge.console`), and the progress sampler;
5. the ingest path (:class:`bridge.ingest.pipeline.Ingest`), built with everything it
   feeds, and the disk spool with its writer and drain tasks
   (:mod:`bridge.ingest.store_forward`), built with the ingest path it reports to;
6. the MQTT client, which feeds the ingest path;
7. the Kafka-to-MQTT command forwarders;
8. with ``--watch-config``, the task that reloads when a config file changes
   (:mod:`bridge.config_watch`).

``bridge.ready`` is logged (and, under systemd, READY=1 sent) once MQTT is
connected and subscribed and the stream server listens.  Every task has this
nursery as parent: when one fails, all are cancelled and the error reaches
:func:`bridge.cli.main`, which prints it without a traceback.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec
import structlog
import trio

from bridge import native
from bridge.auth import AuthConfigError, Authenticator
from bridge.commands.relay import CommandForwarder
from bridge.config_loader import ConfigError, redacted
from bridge.config_watch import Watch, watch_config
from bridge.console import first_run
from bridge.console.api import Console, ConsoleSources, HealthInputs
from bridge.console.deadletters import DeadLetterFeed, dead_letter_topics
from bridge.console.progress import Counters, ProgressTracker, stalled_reasons
from bridge.core.delivery import Tracked
from bridge.core.mqtt_codec import InboundMessage
from bridge.core.normalize import Normalizer
from bridge.core.records import Outgoing
from bridge.core.settings import Config
from bridge.ingest.pipeline import Ingest, LocalFeed
from bridge.ingest.sparkplug_store import StateSaver, load_state
from bridge.ingest.stats import IngestStats
from bridge.ingest.store_forward import READ_ONLY, SpoolIntake, StoreAndForward
from bridge.io import sdnotify
from bridge.io.embedded_broker import run_embedded_broker
from bridge.io.files import spool_path, state_dir
from bridge.io.http import ListenError, Request, Responder
from bridge.io.kafka_producer import KafkaProducer
from bridge.io.mqtt import MqttClient, parse_mqtt_url, port_answers
from bridge.io.spool import Spool, SpoolError, SpoolStats, describe
from bridge.ops import health, metrics
from bridge.runtime import Runtime
from bridge.stream.consumer import KafkaSource
from bridge.stream.service import StreamService, StreamSettingsError, run_stream

log = structlog.get_logger(__name__)

DEFAULT_LOCAL_BROKERS = {("127.0.0.1", 1883), ("localhost", 1883)}
#: Allocations between two youngest-generation collections (Python's default: 700).
GC_YOUNG_THRESHOLD = 10_000
#: How often the progress tracker samples the counters (its precision).
PROGRESS_SAMPLE_S = 1.0


# Reads the config files again and builds everything from them (a reload);
# raises ConfigError listing every problem.
Loader = Callable[[], Runtime]


class StartupError(Exception):
    """The daemon cannot start; the message says what to change."""


async def _wants_embedded(config: Config) -> bool:
    mode = config.mqtt.embedded
    if mode == "never":
        return False
    address = parse_mqtt_url(config.mqtt.url)
    if mode == "always":
        return True
    if (address.host, address.port) not in DEFAULT_LOCAL_BROKERS:
        return False
    return not await port_answers(address.host, address.port)


class _ToIngest:
    """The producer's :class:`ProducerListener`: forwards to the ingest path
    once it exists.

    The producer and ingest each need the other, and the producer comes first:
    ingest is built with it, once the stream and the console it feeds exist,
    while the producer is built with the daemon and already running (health,
    metrics, the command forwarders and the spool use it too).  Like
    the MQTT client's handlers (:meth:`Daemon._on_batch`), this reaches ingest
    through the daemon: until ingest exists there is nothing to tell, and
    ingest is told the producer's state when it is built.
    """

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def after_reports(self) -> None:
        if self._daemon.ingest is not None:
            self._daemon.ingest.after_reports()

    def kafka_state(self, state: str) -> None:
        if self._daemon.ingest is not None:
            self._daemon.ingest.kafka_state(state)


class Daemon:
    """Holds the running parts so signal handlers and endpoints can reach them."""

    def __init__(self, runtime: Runtime, loader: Loader, watch: Watch | None = None) -> None:
        config = runtime.config
        self.runtime = runtime
        self.config = config
        self.loader = loader
        self.watch = watch
        self.plan = runtime.plan
        self.stats = IngestStats()
        # Sparkplug alias tables and sequence state: one object for the daemon's
        # life, shared by the Normalizer of every reload, saved in the state dir.
        state_directory = state_dir(config, dict(os.environ))
        self.sparkplug = StateSaver(load_state(state_directory), state_directory)
        self.normalizer = Normalizer(runtime.plan, sparkplug_state=self.sparkplug.state)
        self.producer = KafkaProducer(
            config.kafka,
            client_id=f"edge-bridge-{socket.gethostname()}",
            listener=_ToIngest(self),
        )
        # A [kafka] setting: like the producer's own, it changes at a restart only.
        self.shutdown_flush_s = config.kafka.shutdown_flush_s
        # Built in _run, once what it feeds exists (the stream, the console).
        self.ingest: Ingest | None = None
        self.mqtt: MqttClient | None = None
        self.forwarder: StoreAndForward[Tracked[Outgoing]] | None = None
        # What ingest also feeds, set up with the stream and the console.
        self._local_feed: LocalFeed | None = None
        self._dead_letter_feed: Callable[[list[Outgoing]], None] | None = None
        self.stream: StreamService | None = None
        self.commands: list[CommandForwarder] = []
        self._spool_snapshot: SpoolStats | None = None
        self.ready = False
        self._stopping = False
        # Called with the new config after a successful reload (the stream
        # server takes its connection limits and JWT keys from here).
        self.reload_hooks: list[Callable[[Runtime], None]] = []
        # Reloads by outcome ("applied", "refused"), for the metrics.
        self.reloads: Counter[str] = Counter()
        self.tracker = ProgressTracker()
        self.console: Console | None = None
        self._dead_letter_source: KafkaSource | None = None
        # The first run's own HMAC secret (bridge.console.first_run), if any.
        self.console_secret: str | None = None

    def _mqtt_client(self, mqtt_settings: Any) -> MqttClient:
        subscriptions = [(m.subscription, m.qos) for m in self.plan.mappings]
        client = MqttClient(
            mqtt_settings,
            subscriptions,
            self._on_batch,
            self.runtime.mqtt_tls,
            max_payload_bytes=self.config.limits.max_payload_bytes,
            on_session_lost=self._on_session_lost,
            backlog=self._in_flight,
        )
        return client

    # The MQTT client and ingest each need the other: the client is built
    # first, and reaches ingest through these (no message comes before
    # ingest is built: the client is started after).
    def _on_batch(self, messages: list[InboundMessage], generation: int) -> None:
        assert self.ingest is not None
        self.ingest.handle_batch(messages, generation)

    def _on_session_lost(self, generation: int) -> None:
        assert self.ingest is not None
        self.ingest.session_lost(generation)

    def _in_flight(self) -> int:
        """Messages whose records are not all held yet (0 before the ingest
        path exists), read from the delivery machine, which keeps the count:
        the MQTT client reads nothing more while ``mqtt.receive_maximum`` wait."""
        return self.ingest.in_flight if self.ingest is not None else 0

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            # Every task has stopped (worker threads included): nothing uses
            # the spool any more.  Sync it and let go of its files and lock.
            if self.forwarder is not None:
                self.forwarder.close()

    async def _run(self) -> None:
        config = self.config
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals, signals, nursery.cancel_scope)
                mqtt_settings = config.mqtt
                if await _wants_embedded(config):
                    address = parse_mqtt_url(config.mqtt.url)
                    log.info(
                        "mqtt.embedded_broker",
                        reason="nothing answers at the default address"
                        if config.mqtt.embedded == "auto"
                        else "mqtt.embedded = always",
                        bind=f"{address.host}:{address.port}",
                    )
                    await nursery.start(run_embedded_broker, address.host, address.port, None)
                    # amqtt speaks MQTT 3.1.1 only.
                    mqtt_settings = msgspec.structs.replace(mqtt_settings, protocol="3.1.1")
                else:
                    log.info("mqtt.external_broker", url=config.mqtt.url)
                nursery.start_soon(self.producer.run)
                nursery.start_soon(self.sparkplug.run)
                self.mqtt = self._mqtt_client(mqtt_settings)
                self._first_run_secret()
                # The listen address first: /readyz answers 503 while MQTT connects.
                await self._start_stream(nursery)
                await self._start_ingest(nursery, self.mqtt)
                await nursery.start(self.mqtt.run)
                for command in self.plan.commands:
                    forwarder = CommandForwarder(command, config.kafka, self.mqtt, self.producer)
                    self.commands.append(forwarder)
                    nursery.start_soon(forwarder.run)
                self.ready = True
                log.info(
                    "bridge.ready",
                    mappings=[m.name for m in self.plan.mappings],
                    listen=config.listen,
                    pid=os.getpid(),
                )
                sdnotify.ready()
                nursery.start_soon(sdnotify.watchdog_loop)
                if self.watch is not None:
                    nursery.start_soon(
                        watch_config,
                        self.watch.main,
                        lambda: self.config,
                        self.reload,
                        self.watch.interval_s,
                    )

    async def _start_ingest(self, nursery: trio.Nursery, mqtt: MqttClient) -> None:
        """Open the spool, build the ingest path with everything it feeds and
        the spool with the ingest path it reports to, start the spool's tasks,
        and tell the ingest path the producer's state (from now on the
        producer's listener, :class:`_ToIngest`, does)."""
        settings = self.config.spool
        intake: SpoolIntake[Tracked[Outgoing]] | None = None
        if settings.enabled:
            path = spool_path(settings.path, dict(os.environ))
            resolved = msgspec.structs.replace(settings, path=path)

            def open_spool() -> Spool:
                return Spool.from_settings(resolved)

            spool, unavailable = await _first_open(open_spool, path, required=settings.required)
            intake = SpoolIntake()
        else:
            log.warning("spool.disabled", hint="records wait in memory while Kafka is down")
        ingest = self.ingest = Ingest(
            self.normalizer,
            self.producer,
            self.stats,
            mqtt,
            spool=intake,
            local_feed=self._local_feed,
            local_topics=frozenset(self.config.stream.topics),
            dead_letter_feed=self._dead_letter_feed,
            sparkplug_changed=self.sparkplug.changed,
        )
        if intake is not None:
            self.forwarder = StoreAndForward(
                spool,
                self.producer,
                self.stats,
                intake,
                ingest,
                fsync_interval_s=settings.fsync_interval_ms / 1000,
                open_spool=open_spool,
                unavailable=unavailable,
            )
            nursery.start_soon(self.forwarder.run)
        ingest.kafka_state(self.producer.state)  # it may have changed before ingest existed

    async def _start_stream(self, nursery: trio.Nursery) -> None:
        try:
            self.stream = await nursery.start(
                partial(
                    run_stream, self.config, auth=self.runtime.auth, endpoints=self.plan.streams
                )
            )
        except (ListenError, AuthConfigError, StreamSettingsError) as exc:
            raise StartupError(str(exc)) from None
        stream = self.stream
        self.reload_hooks.append(lambda runtime: stream.reload(runtime.config, runtime.auth))
        if self.config.stream.source != "kafka":
            self._local_feed = self.stream
        self._mount_operations(self.stream)
        self._mount_console(nursery, self.stream)
        nursery.start_soon(self._sample_progress)

    def _first_run_secret(self) -> None:
        """No key configured and a loopback address: use this machine's own
        secret, so the printed sign-in link works (bridge.console.first_run)."""
        if not first_run.eligible(self.config, os.environ):
            return
        state = first_run.state_directory(self.config, os.environ)
        try:
            self.console_secret = first_run.load_or_create_secret(state)
        except first_run.FirstRunError as exc:
            raise StartupError(str(exc)) from None
        self.runtime = self._with_first_run_secret(self.runtime)
        self.config = self.runtime.config

    def _with_first_run_secret(self, runtime: Runtime) -> Runtime:
        """``runtime`` with this run's own secret in its auth settings and its
        authenticator, while it configures no key of its own."""
        if self.console_secret is None or not first_run.eligible(runtime.config, os.environ):
            return runtime
        config = first_run.with_secret(runtime.config, self.console_secret)
        return dataclasses.replace(runtime, config=config, auth=Authenticator(config.auth))

    def _mount_console(self, nursery: trio.Nursery, stream: StreamService) -> None:
        """The page at ``/``, its JSON endpoints and the dead-letter feed."""
        if not self.config.console.enabled:
            return
        feed = DeadLetterFeed(lambda: self.plan)
        self._dead_letter_feed = feed.publish_local
        sources = ConsoleSources(
            config=lambda: self.config,
            plan=lambda: self.plan,
            auth=lambda: stream.auth,
            origin_allowed=stream.origin_allowed,
            inputs=self._health_inputs,
            clock=trio.current_time,
        )
        self.console = Console(sources, self.tracker, feed)
        self.console.mount(stream.router)
        if self.config.stream.source != "local":
            settings = msgspec.structs.replace(
                self.config.stream, topics=dead_letter_topics(self.plan), group_id=None
            )
            self._dead_letter_source = KafkaSource(
                self.config.kafka, settings, feed, events="console.dead_letters"
            )
            nursery.start_soon(self._dead_letter_source.run)
        if self.console_secret is not None:
            host, port = stream.addresses[0]
            link = first_run.sign_in_link(host, port, self.console_secret, time.time())
            print(f"Open the console: {link}", flush=True)
            log.info("console.sign_in_link", url=link.split("#")[0], valid_s=3600)

    async def _sample_progress(self) -> None:
        while True:
            await self._refresh_spool_snapshot()
            self.tracker.observe(trio.current_time(), self._counters())
            await trio.sleep(PROGRESS_SAMPLE_S)

    def _counters(self) -> Counters:
        stats = self.stats
        pending = self._spool_snapshot.records_pending if self._spool_snapshot else None
        return Counters(
            received=sum(stats.received.values()) + stats.unmatched,
            acked=sum(stats.produced.values()) + stats.spool_drained,
            dead_letters=sum(stats.dead_letters.values()),
            # Messages not held yet, and spooled records: neither in Kafka.
            # (len(producer) would also count librdkafka's protocol requests.)
            waiting=self._in_flight() + (pending or 0),
            spool_appended=stats.spooled,
            spool_pending=pending,
        )

    async def _health_inputs(self) -> HealthInputs:
        await self._refresh_spool_snapshot()
        snapshot = self._spool_snapshot
        assert self.stream is not None
        status = self.stream.status()
        source = self._dead_letter_source
        return HealthInputs(
            state=self._health_state(),
            in_flight_messages=self._in_flight(),
            spool_records=snapshot.records_pending if snapshot else None,
            spool_bytes=snapshot.bytes if snapshot else None,
            stream_connections=status.total_connections,
            stream_source=status.source,
            stream_kafka=status.kafka_state,
            dead_letter_kafka=source.state if source is not None else "disabled",
        )

    def _mount_operations(self, stream: StreamService) -> None:
        """/metrics, /healthz and /readyz on the stream server's routes."""
        registry = metrics.build_registry(
            metrics.Sources(
                stats=self.stats,
                mqtt_connected=lambda: self.mqtt is not None and self.mqtt.connected,
                mqtt_reconnects=lambda: self.mqtt.reconnects if self.mqtt is not None else 0,
                mqtt_acks_waiting=lambda: self.mqtt.acks_waiting if self.mqtt is not None else 0,
                messages_in_flight=self._in_flight,
                kafka_state=lambda: self.producer.state,
                kafka_queue=lambda: len(self.producer),
                spool=lambda: self._spool_snapshot,
                spool_available=(self._spool_available if self.config.spool.enabled else None),
                stream=stream.status,
                commands=lambda: {f.plan.mapping.name: f for f in self.commands},
                ack_wait=lambda: self.tracker.ack_wait_s(trio.current_time()),
                spool_oldest=lambda: self.tracker.oldest_spooled_s(trio.current_time()),
                try_refused=lambda: self.console.try_refused if self.console else {},
                alarms=lambda: self.normalizer.alarms,
                reloads=lambda: self.reloads,
                sparkplug=self._sparkplug_counts,
            )
        )

        async def metrics_endpoint(request: Request, responder: Responder) -> None:
            await self._refresh_spool_snapshot()
            body, content_type = metrics.render(registry, request.headers.get("accept", ""))
            await responder.send(200, body, content_type)

        async def healthz(_request: Request, responder: Responder) -> None:
            answer = health.liveness()
            await responder.send(answer.status, answer.body, answer.content_type)

        async def readyz(_request: Request, responder: Responder) -> None:
            await self._refresh_spool_snapshot()
            answer = health.readiness(self._health_state())
            await responder.send(answer.status, answer.body, answer.content_type)

        stream.router.add("/metrics", metrics_endpoint)
        stream.router.add("/healthz", healthz)
        stream.router.add("/readyz", readyz)

    def _spool_available(self) -> bool:
        return self.forwarder is not None and self.forwarder.unavailable is None

    def _sparkplug_counts(self) -> dict[str, int] | None:
        if self.normalizer.sparkplug is None:
            return None
        return dataclasses.asdict(self.sparkplug.state.counters)

    async def _refresh_spool_snapshot(self) -> None:
        """Spool.stats() takes the spool's lock, which an fsync may hold: read it
        in a worker thread, once per request, never on the loop."""
        spool = self.forwarder.spool if self.forwarder is not None else None
        self._spool_snapshot = None if spool is None else await trio.to_thread.run_sync(spool.stats)

    def _health_state(self) -> health.HealthState:
        snapshot = self._spool_snapshot
        return health.HealthState(
            started=self.ready,
            stopping=self._stopping,
            mqtt_connected=self.mqtt is not None and self.mqtt.connected,
            kafka_state=self.producer.state,
            spool=health.spool_state(
                self.config.spool,
                snapshot.bytes if snapshot else None,
                self.forwarder.unavailable if self.forwarder is not None else None,
            ),
            spool_reason=self.forwarder.unavailable if self.forwarder is not None else None,
            stalled=tuple(self._stalled()),
        )

    def _stalled(self) -> list[str]:
        now = trio.current_time()
        return stalled_reasons(
            self.tracker.ack_wait_s(now),
            self.tracker.oldest_spooled_s(now),
            self.config.health.stalled_after_s,
        )

    async def _signals(self, signals: Any, scope: trio.CancelScope) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.reload()
                continue
            if self._stopping:
                log.warning("bridge.forced_exit", signal=signal.Signals(signum).name)
                scope.cancel()
                return
            self._stopping = True
            log.info("bridge.stopping", signal=signal.Signals(signum).name)
            sdnotify.stopping()
            await self._drain()
            scope.cancel()
            return

    def reload(self) -> None:
        """Apply a new config without dropping connections, or keep the old one
        and log why.

        Everything the new config needs is built first (bridge.runtime: plans,
        stream settings, authenticator and key file, TLS context, librdkafka's
        configuration, the new Normalizer); only then does anything change.
        Mappings, catalog and registry swap atomically (the new Normalizer
        between two batches); subscriptions and the MQTT packet bound are
        changed in place on the live session.  Nothing a reload reads may end
        the process: any failure while building, even one no check foresaw, is
        a refused reload and the running config stays; a failure while
        applying is logged and counted (``incomplete``), and the rest applies."""
        try:
            runtime = self._with_first_run_secret(self.loader())
            normalizer = Normalizer(
                runtime.plan, previous=self.normalizer, sparkplug_state=self.sparkplug.state
            )
        except ConfigError as exc:
            self._refuse(exc.errors)
            return
        except Exception as exc:
            log.exception("bridge.reload_failed")
            self._refuse([f"{type(exc).__name__}: {exc}"])
            return
        config, plan = runtime.config, runtime.plan
        changed = _restart_only_changes(self.config, config)
        self.runtime, self.config, self.plan = runtime, config, plan
        self.normalizer = normalizer
        if self.ingest is not None:
            self.ingest.normalizer = normalizer
        failed = [name for name, step in self._live_steps(runtime) if not _applied(name, step)]
        self.reloads["incomplete" if failed else "applied"] += 1
        log.info(
            "bridge.reloaded",
            mappings=[m.name for m in plan.mappings],
            needs_restart=changed or failed or None,
        )

    def _live_steps(self, runtime: Runtime) -> list[tuple[str, Callable[[], None]]]:
        """What a reload changes on live connections, once its config is in
        force: each step on its own, so one that fails cannot stop the others."""
        plan, max_payload = runtime.plan, runtime.config.limits.max_payload_bytes
        steps: list[tuple[str, Callable[[], None]]] = []
        mqtt = self.mqtt
        if mqtt is not None:
            subscriptions = [(m.subscription, m.qos) for m in plan.mappings]
            steps.append(("mqtt.subscriptions", partial(mqtt.set_subscriptions, subscriptions)))
            steps.append(("limits.max_payload_bytes", partial(mqtt.set_max_payload, max_payload)))
        steps += [("stream", partial(hook, runtime)) for hook in self.reload_hooks]
        if self.stream is not None:
            steps.append(("streams", partial(self.stream.reload_endpoints, plan.streams)))
        return steps

    def _refuse(self, errors: list[str]) -> None:
        self.reloads["refused"] += 1
        for line in errors:
            log.error("bridge.reload_refused", error=line)
        log.error(
            "bridge.reload_refused",
            errors=len(errors),
            hint="the previous config stays in force; fix the file and send SIGHUP"
            " again (with --watch-config, saving it is enough)",
        )

    async def _drain(self) -> None:
        """Stop taking messages, wait for Kafka to acknowledge what is in flight,
        give up on the rest (the delivery machine spools what it can and
        leaves the rest unacknowledged), send the MQTT acknowledgements,
        disconnect."""
        if self.mqtt is not None:
            self.mqtt.pause()
        remaining = await self.producer.flush(self.shutdown_flush_s)
        if self.ingest is not None:
            self.ingest.shutdown()
        if remaining:
            log.warning(
                "kafka.unflushed_at_exit",
                records=remaining,
                hint="spooled if the spool takes them; otherwise their MQTT messages are "
                "not acknowledged and the broker redelivers them",
            )
            self.producer.purge()  # each gets a failed report: the machine decides
        if self.forwarder is not None:
            await self.forwarder.write_queued(wait_for_room=False)
        if self.mqtt is not None:
            self.mqtt.flush_writes()
            await self.mqtt.disconnect()
        if self.sparkplug.state.nodes:
            await self.sparkplug.save()
        log.info(
            "bridge.stopped",
            received=sum(self.stats.received.values()),
            acked=self.stats.acked,
            in_flight=self._in_flight(),
            # Records Kafka confirmed, per topic: beside a reader's count of a
            # topic, tells a record Kafka lost from one the bridge never sent.
            produced=dict(self.stats.produced),
        )


async def _first_open(
    open_spool: Callable[[], Spool], path: str, *, required: bool
) -> tuple[Spool | None, str | None]:
    """Open the spool at start: the spool and None, or what could be opened
    (nothing, or the spool read-only) and why it is unavailable, said loudly.
    With ``required``, anything short of a writable spool stops the start."""
    spool: Spool | None = None
    try:
        spool = await trio.to_thread.run_sync(open_spool)
    except ValueError as exc:
        raise StartupError(f"spool: {exc}") from None
    except (SpoolError, OSError) as exc:
        reason = describe(exc) if isinstance(exc, OSError) else str(exc)
        detail = str(exc)
        hint = (
            "running WITHOUT the spool: records go straight to Kafka and nothing holds "
            "them on disk while Kafka is away; retrying to open it with back-off"
        )
    else:
        if not spool.read_only:
            return spool, None
        reason = detail = READ_ONLY
        hint = (
            "opened read-only: the records it holds are drained, new ones go straight to "
            "Kafka; it is opened for writing once the file system is writable again"
        )
    if required:
        if spool is not None:
            spool.close()
        raise StartupError(
            f"cannot open the spool at {path}: {detail} (set spool.path to a writable "
            "directory, or spool.required = false to start without it)"
        )
    log.error(
        "spool.unavailable",
        path=path,
        reason=reason,
        records_pending=spool.stats().records_pending if spool is not None else None,
        hint=f"{hint} (spool.required = true refuses to start instead)",
    )
    return spool, reason


def _applied(name: str, step: Callable[[], None]) -> bool:
    """Run one step of applying a reload behind a barrier: a failure no check
    foresaw is logged with its traceback and the step named, never raised
    (it would end the daemon from a signal handler)."""
    try:
        step()
    except Exception as exc:
        log.exception(
            "bridge.reload_step_failed",
            step=name,
            error=f"{type(exc).__name__}: {exc}",
            hint="the rest of the reload is applied; restart to apply this part",
        )
        return False
    return True


def _restart_only_changes(old: Config, new: Config) -> list[str]:
    """Sections a reload cannot apply to live connections: they take effect at
    the next restart, and the reload log line says so."""
    return [
        name
        for name in ("mqtt", "kafka", "listen", "spool", "commands")
        if getattr(old, name) != getattr(new, name)
    ]


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the data path.

    Every message allocates objects that live for the few milliseconds until
    Kafka acknowledges it.  With Python's default thresholds they are swept
    into the oldest generation before they die, which triggers full
    collections over every object in the process: about a fifth of the
    daemon's CPU at 20k msgs/s (docs/benchmarks.md).  A larger youngest
    generation lets them die young, and freezing what startup allocated keeps
    it out of every later collection."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


async def run_daemon(runtime: Runtime, loader: Loader, watch: Watch | None = None) -> None:
    log.info("bridge.starting", hot_path=native.describe(), config=redacted(runtime.config))
    tune_gc()
    await Daemon(runtime, loader, watch).run()
