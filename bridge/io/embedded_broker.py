"""The zero-setup MQTT broker: amqtt, in a child process.

When nothing answers at the default local MQTT address, ``edge-bridge run``
starts this so a first run needs no external service.  amqtt is asyncio-based
and the daemon is trio, so it runs as a child process (``python -m
bridge.io.embedded_broker``) that lives and dies with the daemon's nursery;
that also keeps the broker's CPU off the bridge's event loop.  amqtt speaks MQTT
3.1.1 only and is about 7 times slower than mosquitto: use mosquitto
(broker_config/mosquitto.conf) for anything beyond a trial.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import structlog
import trio

log = structlog.get_logger(__name__)


def broker_config(bind: str, config_file: str | None) -> dict[str, Any]:
    """amqtt settings: a YAML file when given, else one anonymous TCP listener."""
    if config_file:
        import yaml  # type: ignore[import-untyped]  # amqtt depends on PyYAML

        loaded: dict[str, Any] = yaml.safe_load(Path(config_file).read_text())
        return loaded
    return {
        "listeners": {"default": {"type": "tcp", "bind": bind}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def _serve(config: dict[str, Any]) -> None:
    from amqtt.broker import Broker

    broker = Broker(config)
    await broker.start()
    print("embedded-broker-ready", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.io.embedded_broker")
    parser.add_argument("--bind", default="127.0.0.1:1883")
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        asyncio.run(_serve(broker_config(args.bind, args.config)))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"embedded broker cannot listen on {args.bind}: {exc}", file=sys.stderr)
        return 2
    return 0


async def run_embedded_broker(
    host: str,
    port: int,
    config_file: str | None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the broker as a child process until cancelled; ``started()`` once it
    accepts connections."""
    command = [sys.executable, "-m", "bridge.io.embedded_broker", "--bind", f"{host}:{port}"]
    if config_file:
        command += ["--config", config_file]
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            lambda task_status: trio.run_process(
                command, stdout=subprocess.PIPE, check=False, task_status=task_status
            )
        )
        assert process.stdout is not None
        seen = b""
        with trio.fail_after(20):
            while b"embedded-broker-ready" not in seen:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(
                        f"the embedded MQTT broker exited (code {await process.wait()}): "
                        f"is {host}:{port} already taken?"
                    )
                seen += chunk
        log.info("mqtt.embedded_broker_started", bind=f"{host}:{port}", pid=process.pid)
        task_status.started()
        await process.wait()
        raise RuntimeError(f"the embedded MQTT broker exited with code {process.returncode}")


if __name__ == "__main__":
    raise SystemExit(main())
