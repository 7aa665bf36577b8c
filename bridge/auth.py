"""Who is connecting to the stream: a JWT (PyJWT) -> a :class:`Principal`.

Keys: HS256/384/512 with a shared secret (``auth.jwt_secret``, or the
``EDGE_BRIDGE_JWT_SECRET`` environment variable), or RS*/PS*/ES*/EdDSA with a
PEM public key file; ``auth.algorithms`` lists what is accepted.  The key is
chosen by the token header's ``alg`` among those allowed, so a token can never
make the server verify an RS256 signature with an HMAC secret (or the reverse).
``exp`` is required and checked.

Why a refusal carries both a close code and an HTTP status: the same decision
is reported as a WebSocket close (4001/4003/4029, after the handshake, since
browsers do not expose a refused handshake's status) or as an SSE response
(401/403/429).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bridge.core.settings import AuthSettings, Config
from bridge.io.files import read_problem
from bridge.io.jwks import JwksError, JwksKeys

log = structlog.get_logger(__name__)

SECRET_ENV = "EDGE_BRIDGE_JWT_SECRET"
#: The subprotocol a browser offers, next to the token, to authenticate a WebSocket.
BEARER_SUBPROTOCOL = "bearer"
#: The warning of an authenticator without any key.
NO_KEY = "auth.no_key"
#: RFC 7518: an HMAC key should be at least as long as the hash output.
MIN_SECRET_BYTES = 32


class Refusal(enum.Enum):
    """Why a stream connection is refused: (WebSocket close code, HTTP status)."""

    UNAUTHENTICATED = (4001, 401)
    FORBIDDEN = (4003, 403)
    TOO_MANY = (4029, 429)
    BAD_REQUEST = (4400, 400)

    @property
    def close_code(self) -> int:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]


class Refused(Exception):
    """A refused connection (bad token, tenant not granted, limit reached);
    ``refusal`` says how to report it."""

    def __init__(
        self, refusal: Refusal, message: str, *, codes: tuple[int, int] | None = None
    ) -> None:
        super().__init__(message)
        self.refusal = refusal
        self._codes = codes

    @property
    def close_code(self) -> int:
        """The refusal's WebSocket close code, or the one an endpoint chose."""
        return self._codes[0] if self._codes is not None else self.refusal.close_code

    @property
    def http_status(self) -> int:
        return self._codes[1] if self._codes is not None else self.refusal.http_status


class AuthConfigError(ValueError):
    """Auth settings that cannot work (unreadable key, unknown algorithm)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller.  An admin may have no tenant; a client always has one."""

    role: Literal["admin", "client"]
    tenant: str | None
    subject: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _is_hmac(algorithm: str) -> bool:
    return algorithm.startswith("HS")


def load_public_key(path: Path) -> Any:
    """The PEM public key in ``path``.  Whatever is wrong with the file
    (missing, a directory, unreadable, empty, truncated, not a key, a key
    type the library cannot use) is an :class:`AuthConfigError` naming it,
    never another exception: a reload reads this file while the daemon runs."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuthConfigError(f"auth.public_key_file: {path}: {read_problem(exc)}") from None
    try:
        return load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        reason = "empty file" if not data.strip() else "not a PEM public key"
        raise AuthConfigError(f"auth.public_key_file: {path}: {reason}") from None


def _check_key_fits(algorithm: str, key: Any, path: Path) -> None:
    """PyJWT raises TypeError, not an invalid-token error, when a token's
    algorithm does not fit the key (ES256 with an RSA key): refuse such a
    pairing in the config instead of failing on the first such token."""
    try:
        jwt.get_algorithm_by_name(algorithm).prepare_key(key)
    except (jwt.PyJWTError, TypeError, ValueError):
        raise AuthConfigError(
            f"auth.algorithms: {algorithm} cannot use the {type(key).__name__} in {path}: "
            "list only the algorithms of the key's type"
        ) from None


class Authenticator:
    """Verifies tokens with the keys loaded once from the settings.

    Built again on a config reload, so a new secret or key file takes effect
    for the next connection without touching open ones.
    """

    def __init__(self, settings: AuthSettings, environ: Mapping[str, str] = os.environ) -> None:
        known = set(jwt.algorithms.get_default_algorithms()) - {"none"}
        unknown = [a for a in settings.algorithms if a not in known]
        if unknown or not settings.algorithms:
            raise AuthConfigError(
                f"auth.algorithms: {unknown or 'empty'}: use some of {', '.join(sorted(known))}"
            )
        self._settings = settings
        self._secret = settings.jwt_secret or environ.get(SECRET_ENV) or None
        self._public_key: Any = None
        if (
            sum(bool(x) for x in (settings.public_key_file, settings.jwks_file, settings.jwks_url))
            > 1
        ):
            raise AuthConfigError("auth: set only one of public_key_file, jwks_file, jwks_url")
        self.jwks: JwksKeys | None = None
        if settings.jwks_file or settings.jwks_url:
            try:
                self.jwks = JwksKeys(
                    url=settings.jwks_url,
                    file=settings.jwks_file,
                    refresh_s=settings.jwks_refresh_s,
                    min_interval_s=settings.jwks_min_interval_s,
                )
            except JwksError as exc:
                raise AuthConfigError(str(exc)) from None
        if settings.public_key_file:
            path = Path(settings.public_key_file)
            self._public_key = load_public_key(path)
            for algorithm in settings.algorithms:
                if not _is_hmac(algorithm):
                    _check_key_fits(algorithm, self._public_key, path)
        # (event, hint) pairs: logged by whoever puts this authenticator to
        # use, printed by check-config, which builds one only to check it.
        self.warnings: list[tuple[str, str]] = []
        if self.jwks is not None and all(_is_hmac(a) for a in settings.algorithms):
            self.warnings.append(
                (
                    "auth.jwks_unused",
                    "an identity provider's keys verify RS256/ES256 tokens: "
                    'list them in auth.algorithms (algorithms = ["RS256"])',
                )
            )
        if self._secret is not None and len(self._secret.encode()) < MIN_SECRET_BYTES:
            self.warnings.append(
                ("auth.weak_secret", f"use an HMAC secret of at least {MIN_SECRET_BYTES} bytes")
            )
        if not self.configured:
            self.warnings.append(
                (
                    NO_KEY,
                    f"every stream connection is refused until auth.jwt_secret, {SECRET_ENV} "
                    "or auth.public_key_file is set",
                )
            )

    def log_warnings(self, *, keys_needed: bool = True) -> None:
        """``keys_needed`` false: no endpoint verifies tokens (every
        ``[[streams]]`` endpoint has ``auth = "none"``), so a missing key is
        not worth a warning."""
        for event, hint in self.warnings:
            if keys_needed or event != NO_KEY:
                log.warning(event, hint=hint)

    @property
    def configured(self) -> bool:
        """Whether any allowed algorithm has a key, i.e. some token can pass."""
        asymmetric = any(not _is_hmac(a) for a in self._settings.algorithms)
        if self.jwks is not None and self.jwks.has_keys and asymmetric:
            return True
        return any(self._key_for(a) is not None for a in self._settings.algorithms)

    def _key_for(self, algorithm: str, kid: object = None) -> Any:
        if _is_hmac(algorithm):
            return self._secret
        if self.jwks is not None:
            return self.jwks.key(kid)
        return self._public_key

    def adopt(self, previous: Authenticator) -> None:
        """Carry the identity provider's key set over a reload."""
        if self.jwks is not None and previous.jwks is not None:
            self.jwks.adopt(previous.jwks)

    async def refresh_keys(self, token: str | None) -> None:
        """Before verifying ``token``: fetch the identity provider's key set if
        it is stale or lacks the token's key (in a worker thread, rate-limited).
        Never raises: a bad token is refused by :meth:`claims`."""
        if self.jwks is None or not token:
            return
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            return
        await self.jwks.refresh_for(kid)

    def verify(self, token: str | None) -> Principal:
        """The principal of a valid token, or :class:`Refused` saying why not."""
        return principal_from_claims(self.claims(token))

    def claims(self, token: str | None) -> dict[str, Any]:
        """The claims of a valid token, or :class:`Refused` (unauthenticated)."""
        if not token:
            raise Refused(Refusal.UNAUTHENTICATED, "missing token")
        settings = self._settings
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            if algorithm not in settings.algorithms:
                raise Refused(Refusal.UNAUTHENTICATED, f"algorithm {algorithm!r} not accepted")
            key = self._key_for(algorithm, jwt.get_unverified_header(token).get("kid"))
            if key is None:
                raise Refused(Refusal.UNAUTHENTICATED, f"no key for {algorithm} and this kid")
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                options={"require": ["exp"]},
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
            )
        except jwt.InvalidTokenError as exc:
            raise Refused(Refusal.UNAUTHENTICATED, f"invalid token: {exc}") from None
        return claims


def keys_needed(config: Config) -> bool:
    """Whether any endpoint verifies tokens: the built-in ones do, a
    ``[[streams]]`` endpoint unless its ``auth`` is ``none``."""
    return not config.streams or any(s.auth == "jwt" for s in config.streams)


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """``role`` must be admin or client; ``tenant`` a non-empty string (optional
    for an admin).  Anything else is a valid token without the right to watch."""
    role = claims.get("role")
    if role not in ("admin", "client"):
        raise Refused(Refusal.FORBIDDEN, f"role {role!r} is not allowed: admin or client")
    tenant = claims.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        raise Refused(Refusal.FORBIDDEN, "tenant claim must be a non-empty string")
    if role == "client" and tenant is None:
        raise Refused(Refusal.FORBIDDEN, "a client token needs a tenant claim")
    subject = claims.get("sub")
    return Principal(role, tenant, subject if isinstance(subject, str) else None)


def _looks_like_jwt(text: str) -> bool:
    return text.count(".") == 2


def select_subprotocol(proposed: Sequence[str]) -> str | None:
    """The subprotocol to accept so that a browser keeps the connection.

    Browsers cannot set headers on a WebSocket, so they pass the token as a
    subprotocol: ``new WebSocket(url, ["bearer", token])``, and the server must
    select one of the offered values.  A lone token offered on its own is
    echoed back, as some clients expect.
    """
    if BEARER_SUBPROTOCOL in proposed:
        return BEARER_SUBPROTOCOL
    if len(proposed) == 1 and _looks_like_jwt(proposed[0]):
        return proposed[0]
    return None


def find_token(
    query: Mapping[str, list[str]], headers: Mapping[str, str], subprotocols: Sequence[str]
) -> str | None:
    """The token from ``?token=``, ``Authorization: Bearer``, or a subprotocol,
    in that order."""
    for value in query.get("token", []):
        if value:
            return value
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    for value in subprotocols:
        if value != BEARER_SUBPROTOCOL and _looks_like_jwt(value):
            return value
    return None
