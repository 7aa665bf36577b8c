"""Sign-in on a first run: a secret of this machine's own and a link to open.

The pattern notebook servers use.  When no auth key is configured and the
listen address is loopback, ``edge-bridge run`` keeps a random HMAC secret in
a file of its state directory (mode 0600, made once and reused) and prints one
line with a link to the console whose URL fragment carries a short-lived admin
token.  The fragment never leaves the browser (it is not sent in the request
nor in a Referer), and the page moves the token to the tab's sessionStorage
and removes it from the address bar and the history.

Never on a non-loopback address: whoever can reach the port could not read
the link, but a secret the operator did not choose would then guard a network
service (docs/security.md).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

import jwt
import msgspec

from bridge.auth import SECRET_ENV
from bridge.core.settings import Config
from bridge.io.files import state_dir
from bridge.io.http import parse_listen

SECRET_FILE = "console-secret"
#: How long the token in the printed link is valid.
LINK_TOKEN_TTL_S = 3600


class FirstRunError(Exception):
    """The secret file cannot be made or read; the message names it."""


def is_loopback(listen: str) -> bool:
    host, _port = parse_listen(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def eligible(config: Config, environ: Mapping[str, str]) -> bool:
    """Whether this run makes its own secret: no key of any kind configured,
    HS256 accepted, the console on, and a loopback listen address."""
    auth = config.auth
    return (
        config.console.enabled
        and config.console.first_run_link
        and not auth.jwt_secret
        and not environ.get(SECRET_ENV)
        and not auth.public_key_file
        and "HS256" in auth.algorithms
        and is_loopback(config.listen)
    )


def state_directory(config: Config, environ: Mapping[str, str]) -> Path:
    """Where the secret lives: the daemon's state directory (``state_dir``,
    else the directory that holds the spool)."""
    return Path(state_dir(config, dict(environ)))


def read_secret(directory: Path) -> str | None:
    """The secret a first run made, or None when there is none (yet)."""
    try:
        secret = (directory / SECRET_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FirstRunError(f"cannot read {directory / SECRET_FILE}: {exc.strerror}") from None
    return secret or None


def load_or_create_secret(directory: Path) -> str:
    """The secret in ``directory/console-secret``, made (0600) on first use."""
    path = directory / SECRET_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                os.chmod(path, 0o600)
            secret = path.read_text().strip()
            if len(secret) >= 32:
                return secret
            raise FirstRunError(f"{path}: too short; delete it and a new one is made") from None
        with os.fdopen(fd, "w") as out:
            secret = secrets.token_hex(32)
            out.write(secret + "\n")
        return secret
    except OSError as exc:
        raise FirstRunError(
            f"cannot keep the console secret at {path}: {exc.strerror or exc} "
            "(set spool.path to a writable directory, or configure auth.jwt_secret)"
        ) from None


def with_secret(config: Config, secret: str) -> Config:
    return msgspec.structs.replace(
        config, auth=msgspec.structs.replace(config.auth, jwt_secret=secret)
    )


def sign_in_link(host: str, port: int, secret: str, now_s: float) -> str:
    """``http://HOST:PORT/#token=JWT`` with an admin token valid for an hour."""
    claims = {"role": "admin", "sub": "first-run", "exp": int(now_s) + LINK_TOKEN_TTL_S}
    token = jwt.encode(claims, secret, algorithm="HS256")
    shown_host = f"[{host}]" if ":" in host else host
    return f"http://{shown_host}:{port}/#token={token}"
