"""The console's pure parts: dead letters' tenants and who sees them, the
first-run secret and link, the page's files and their security headers, and
"try a payload" giving what ``try-mapping`` gives."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import jwt
import msgspec
import pytest

from bridge.auth import Principal
from bridge.console import assets, first_run
from bridge.console.deadletters import DeadLetterFeed, letter_tenant, watcher_tenant
from bridge.core.normalize import Normalizer, Now
from bridge.core.plan import Plan, compile_config
from bridge.core.records import DeadLetter
from bridge.core.settings import (
    AuthSettings,
    Config,
    ConsoleSettings,
    LoadedConfig,
    Mapping,
    MqttSide,
    PayloadRules,
    Source,
)
from bridge.core.trial import try_message

NOW_MS = 1_772_028_000_000


def plan_of(*mappings: Mapping) -> Plan:
    config = Config(mappings=list(mappings))
    return compile_config(LoadedConfig(config, [("test", i) for i in range(len(mappings))]))


DEFAULT = plan_of(Mapping())
BY_FIELD = plan_of(
    Mapping(
        name="by-field",
        mqtt=MqttSide(topic="site/{device}/up"),
        payload=PayloadRules(tenant=Source(field="org")),
    )
)


def letter(topic: str, payload: str = "x", mapping: str | None = "telemetry") -> DeadLetter:
    return DeadLetter(
        reason="invalid_json",
        detail="payload is not valid JSON",
        mqtt_topic=topic,
        mapping=mapping,
        payload=payload,
        received_at="2026-02-25T14:00:00.000Z",
    )


# --------------------------------------------------------------------------- tenants
def test_a_dead_letter_tenant_comes_from_the_topic_segment() -> None:
    assert letter_tenant(DEFAULT, letter("tenant/t1/device/D/telemetry")) == "t1"


def test_a_dead_letter_tenant_from_a_payload_field_needs_a_json_payload() -> None:
    good = letter("site/D/up", '{"org": "acme", "x": [1', mapping="by-field")
    assert letter_tenant(BY_FIELD, good) is None  # not JSON: cannot be told
    parsed = letter("site/D/up", '{"org": "acme"}', mapping="by-field")
    assert letter_tenant(BY_FIELD, parsed) == "acme"
    deep = letter("site/D/up", "[" * 5000 + "]" * 5000, mapping="by-field")
    assert letter_tenant(BY_FIELD, deep) is None


def test_a_dead_letter_of_no_known_mapping_has_no_tenant() -> None:
    assert letter_tenant(DEFAULT, letter("other/topic")) is None
    assert letter_tenant(DEFAULT, letter("tenant/t1/device/D/telemetry", mapping="gone")) is None


async def test_watchers_see_their_tenant_only_and_admins_see_all() -> None:
    feed = DeadLetterFeed(lambda: DEFAULT)
    encode = msgspec.json.encode
    feed.publish_kafka("dlq", 0, 0, encode(letter("tenant/t1/device/D/telemetry")), "now")
    t2 = feed.watch("t2")
    admin = feed.watch(None)
    feed.publish_kafka("dlq", 0, 1, encode(letter("tenant/t2/device/D/telemetry")), "now")
    feed.publish_kafka("dlq", 0, 2, encode(letter("nobody/knows")), "now")
    feed.publish_kafka("dlq", 0, 3, b"not a dead letter", "now")

    def drained(watcher: object) -> list[dict[str, object]]:
        out = []
        while True:
            try:
                out.append(msgspec.json.decode(watcher.receive.receive_nowait()))  # type: ignore[attr-defined]
            except Exception:
                return out

    assert [m["tenant"] for m in drained(t2)] == ["t2"]
    assert [m["tenant"] for m in drained(admin)] == ["t1", "t2", None]
    assert feed.positions == {"dlq": {0: 4}}


def test_local_dead_letters_are_not_shown_twice_when_kafka_brings_them_back() -> None:
    feed = DeadLetterFeed(lambda: DEFAULT)
    outcome = Normalizer(DEFAULT).process("tenant/t1/device/D/telemetry", b"{", Now(NOW_MS))
    feed.publish_local(outcome.records)
    assert len(feed.backlog) == 1
    dead = [r for r in outcome.records if r.topic == "telemetry.dlq"]
    feed.publish_kafka("telemetry.dlq", 0, 0, dead[0].value, "now")
    assert len(feed.backlog) == 1
    feed.kafka_feeding = True
    feed.publish_local(outcome.records)  # Kafka feeds: local letters wait for it
    assert len(feed.backlog) == 1


def test_a_client_token_watches_its_own_tenant_whatever_it_asks() -> None:
    client = Principal("client", "t1", None)
    admin = Principal("admin", None, None)
    assert watcher_tenant(client, {"tenant": ["t2"]}) == "t1"
    assert watcher_tenant(admin, {"tenant": ["t2"]}) == "t2"
    assert watcher_tenant(admin, {}) is None


# --------------------------------------------------------------------------- first run
def test_first_run_only_without_any_key_and_on_loopback() -> None:
    base = Config(listen="127.0.0.1:8080")
    assert first_run.eligible(base, {})
    assert first_run.eligible(msgspec.structs.replace(base, listen="[::1]:8080"), {})
    assert first_run.eligible(msgspec.structs.replace(base, listen="localhost:8080"), {})
    assert not first_run.eligible(msgspec.structs.replace(base, listen="0.0.0.0:8080"), {})
    assert not first_run.eligible(msgspec.structs.replace(base, listen=":8080"), {})
    assert not first_run.eligible(msgspec.structs.replace(base, listen="10.0.0.5:8080"), {})
    assert not first_run.eligible(base, {"EDGE_BRIDGE_JWT_SECRET": "s" * 32})
    keyed = msgspec.structs.replace(base, auth=AuthSettings(jwt_secret="s" * 32))
    assert not first_run.eligible(keyed, {})
    off = msgspec.structs.replace(base, console=ConsoleSettings(first_run_link=False))
    assert not first_run.eligible(off, {})


def test_the_first_run_secret_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    secret = first_run.load_or_create_secret(tmp_path / "state")
    path = tmp_path / "state" / first_run.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) == 64
    assert first_run.load_or_create_secret(tmp_path / "state") == secret
    path.chmod(0o644)
    first_run.load_or_create_secret(tmp_path / "state")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_unusable_state_directory_is_one_line_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(first_run.FirstRunError, match=str(blocker)):
        first_run.load_or_create_secret(blocker / "state")


def test_the_link_carries_a_short_lived_admin_token_in_the_fragment() -> None:
    link = first_run.sign_in_link("127.0.0.1", 8080, "k" * 64, 1000.0)
    base, _, fragment = link.partition("#")
    assert base == "http://127.0.0.1:8080/"
    token = fragment.removeprefix("token=")
    claims = jwt.decode(token, "k" * 64, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["role"] == "admin"
    assert claims["exp"] == 1000 + first_run.LINK_TOKEN_TTL_S
    assert first_run.sign_in_link("::1", 8080, "k" * 64, 0).startswith("http://[::1]:8080/#")


# --------------------------------------------------------------------------- page
def test_the_page_allows_no_inline_script_and_no_other_host() -> None:
    csp = dict(assets.SECURITY_HEADERS)["content-security-policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert dict(assets.SECURITY_HEADERS)["x-content-type-options"] == "nosniff"
    files = assets.load()
    html = files["/"].body.decode()
    assert "<script>" not in html, "inline script"
    assert not re.search(r"<[^>]*\s(on[a-z]+|style)\s*=", html), "inline handler or style"
    everything = b"".join(a.body for a in files.values()).decode()
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", everything), "no other host"
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}", everything), "no token in the assets"
    assert 0 < assets.page_weight(files) < 60_000


# --------------------------------------------------------------------------- try a payload
def test_a_trial_is_what_the_normalizer_makes_and_names_the_dead_letters() -> None:
    trial = try_message(DEFAULT, "tenant/t1/device/D/telemetry", b"garbage", NOW_MS)
    assert trial.mapping == "telemetry"
    assert trial.dead_letters == ["invalid_json"]
    assert [r["topic"] for r in trial.records] == ["telemetry.dlq"]
    good = b'{"schema_version": 1, "metrics": {"t": 1.5}}'
    trial = try_message(DEFAULT, "tenant/t1/device/D/telemetry", good, NOW_MS)
    assert trial.dead_letters == []
    assert trial.records[0]["value"]["value"] == 1.5
    assert trial.records[0]["key"] == "t1:D"
    assert try_message(DEFAULT, "nope", good, NOW_MS).mapping is None
