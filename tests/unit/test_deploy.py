"""The container files, checked by reading them: Docker cannot run here.

docker-compose.yml, the Dockerfile, deploy/edge-bridge.compose.toml and
broker_config/ must agree with each other (paths, topics, host names,
passwords) and the bridge config must pass ``edge-bridge check-config`` laid out
exactly as the container sees it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # amqtt depends on PyYAML
from amqtt.contexts import BrokerConfig

from bridge.cli import main as cli_main
from bridge.config_loader import load_config
from bridge.core.settings import Config
from bridge.io.mqtt import parse_mqtt_url

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"][name]
    return found


def dockerfile_entrypoint() -> list[str]:
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE)
    assert match, "the Dockerfile needs an exec-form ENTRYPOINT"
    entrypoint: list[str] = json.loads(match.group(1))
    return entrypoint


def bridge_config_path() -> str:
    entrypoint = dockerfile_entrypoint()
    return entrypoint[entrypoint.index("--config") + 1]


def container_layout(compose: dict[str, Any], root: Path) -> Path:
    """Copy every bind mount of the bridge service under ``root`` at its
    container path; return where the bridge's config file lands."""
    for volume in service(compose, "edge-bridge")["volumes"]:
        source, target = volume.split(":")[:2]
        if not source.startswith("./"):
            continue  # a named volume
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(origin, destination)
        else:
            shutil.copy(origin, destination)
    return root / bridge_config_path().lstrip("/")


@pytest.fixture
def bridge_config(compose: dict[str, Any], tmp_path: Path) -> tuple[Path, Config]:
    path = container_layout(compose, tmp_path)
    return path, load_config(path).config


def test_compose_config_passes_check_config(
    bridge_config: tuple[Path, Config], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = bridge_config
    assert path.exists(), "nothing is mounted where the Dockerfile's ENTRYPOINT reads its config"
    assert cli_main(["check-config", str(path)]) == 0, capsys.readouterr().err
    assert ": ok: " in capsys.readouterr().out


def test_compose_creates_every_topic_the_bridge_uses(
    compose: dict[str, Any], bridge_config: tuple[Path, Config]
) -> None:
    script = service(compose, "kafka-topics")["command"][0]
    match = re.search(r"for topic in ([^;]+);", script.replace("\\\n", " "))
    assert match
    created = set(match.group(1).split())
    _, config = bridge_config
    used = {config.alarms_topic, *config.stream.topics}
    for mapping in config.mappings:
        used |= {mapping.kafka.clean_topic, mapping.kafka.dead_letter_topic}
        if mapping.kafka.raw_enabled:
            used.add(mapping.kafka.raw_topic)
    for command in config.commands:
        used |= {command.kafka_topic, command.dead_letter_topic}
    assert used <= created, f"add to kafka-topics in docker-compose.yml: {used - created}"
    assert "device.commands" in used, "the compose stack shows commands down to devices"


def test_bridge_reaches_the_compose_services(
    compose: dict[str, Any], bridge_config: tuple[Path, Config]
) -> None:
    _, config = bridge_config
    broker = parse_mqtt_url(config.mqtt.url)
    assert broker.host in compose["services"]
    ports = service(compose, broker.host)["ports"]
    assert any(port.endswith(f":{broker.port}") for port in ports)
    assert config.mqtt.embedded == "never"
    kafka_env = service(compose, "kafka")["environment"]
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"PLAINTEXT://{config.kafka.bootstrap}" in advertised


def test_bridge_credentials_are_the_ones_mosquitto_gets(
    compose: dict[str, Any], bridge_config: tuple[Path, Config]
) -> None:
    _, config = bridge_config
    passwords = compose["x-mqtt-passwords"]
    assert config.mqtt.password == passwords["MQTT_BRIDGE_PASSWORD"]
    init_script = service(compose, "mosquitto-init")["command"][0]
    # ($$ is compose's escape for a literal $: the shell sees the variable.)
    assert f'passwd {config.mqtt.username} "$$MQTT_BRIDGE_PASSWORD"' in init_script
    healthcheck = " ".join(service(compose, "mosquitto")["healthcheck"]["test"])
    assert f'-u {config.mqtt.username} -P "$$MQTT_BRIDGE_PASSWORD"' in healthcheck


def test_mosquitto_finds_what_its_config_names(compose: dict[str, Any]) -> None:
    conf = (REPO / "broker_config" / "mosquitto.conf").read_text()
    settings = dict(
        line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    mounts = [v.split(":")[1] for v in service(compose, "mosquitto")["volumes"]]
    password_dir = str(Path(settings["password_file"]).parent)
    assert password_dir in mounts
    assert settings["persistence_location"].rstrip("/") in mounts
    init = service(compose, "mosquitto-init")
    assert "./broker_config/mosquitto.conf:/config/mosquitto.conf:ro" in init["volumes"]
    assert "cp /config/mosquitto.conf /etc/mosquitto/mosquitto.conf" in init["command"][0]
    assert service(compose, "mosquitto")["command"][-1] == "/etc/mosquitto/mosquitto.conf"


def test_dependencies_wait_for_health_and_one_shots(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        for dependency, condition in spec.get("depends_on", {}).items():
            one_shot = compose["services"][dependency].get("restart") == "no"
            expected = "service_completed_successfully" if one_shot else "service_healthy"
            assert condition == {"condition": expected}, f"{name} -> {dependency}"
            if not one_shot:
                assert "healthcheck" in compose["services"][dependency], dependency


def test_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    text = (REPO / "Dockerfile").read_text()
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = [
        part
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for part in line.split()[1:-1]
    ]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert source not in ignored, f"{source} is excluded by .dockerignore"
    assert dockerfile_entrypoint()[:2] == ["edge-bridge", "run"]
    assert "/healthz" in text and "USER edge-bridge" in text


def test_amqtt_example_is_a_valid_amqtt_config() -> None:
    raw = yaml.safe_load((REPO / "broker_config" / "amqtt.yaml").read_text())
    config = BrokerConfig.from_dict(raw)
    assert config.listeners["default"].bind
    assert config.plugins and "amqtt.plugins.authentication.FileAuthPlugin" in config.plugins
