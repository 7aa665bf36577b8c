"""Signing keys from an identity provider: a JWKS file, or a JWKS URL fetched
with PyJWT's :class:`jwt.PyJWKClient`.

Why the key set is kept here rather than in PyJWKClient's own cache: its
cache forgets the set when it expires, so a gateway whose uplink is down
would refuse every token once the lifespan passed.  Here the last good set
stays in use until a fetch succeeds (said once in the log when the provider
cannot be reached, and once when it can again).

When a fetch happens: when the set is older than ``refresh_s``, or a token
names a ``kid`` the set does not have (a key rotation), but never sooner than
``min_interval_s`` after the previous attempt, so a flood of tokens with
made-up key ids costs one request per interval.  The fetch blocks (urllib),
so it runs in a worker thread (:meth:`JwksKeys.refresh_for`); verifying a
token only reads the set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import trio
from jwt import PyJWK, PyJWKClient, PyJWKSet
from jwt.exceptions import PyJWKClientError, PyJWKError, PyJWKSetError

log = structlog.get_logger(__name__)

#: Bound on one fetch of the key set.
FETCH_TIMEOUT_S = 5.0


class JwksError(ValueError):
    """A JWKS file that cannot be used; the message names it."""


def _by_kid(key_set: PyJWKSet) -> dict[str | None, PyJWK]:
    return {key.key_id: key for key in key_set.keys}


def load_jwks_file(path: Path) -> dict[str | None, PyJWK]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise JwksError(f"auth.jwks_file: {path}: cannot read: {exc}") from None
    try:
        return _by_kid(PyJWKSet.from_json(text))
    except (PyJWKError, PyJWKSetError, ValueError, TypeError) as exc:
        raise JwksError(f"auth.jwks_file: {path}: not a usable JWKS: {exc}") from None


class JwksKeys:
    """The key set of a JWKS file or URL, by key id."""

    def __init__(
        self,
        *,
        url: str | None = None,
        file: str | None = None,
        refresh_s: float = 300.0,
        min_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._client = (
            PyJWKClient(url, cache_jwk_set=False, timeout=FETCH_TIMEOUT_S) if url else None
        )
        self._keys: dict[str | None, PyJWK] = load_jwks_file(Path(file)) if file else {}
        self._refresh_s = refresh_s
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._fetched_at = -math.inf
        self._tried_at = -math.inf
        self._unreachable = False
        self._lock = trio.Lock()
        self.fetches = 0

    def adopt(self, previous: JwksKeys) -> None:
        """Keep the keys of the authenticator this one replaces (a reload),
        when both read the same URL: no gap if the uplink is down."""
        if self.url is not None and previous.url == self.url and previous._keys:
            self._keys = previous._keys
            self._fetched_at = previous._fetched_at
            self._tried_at = previous._tried_at
            self._unreachable = previous._unreachable

    def key(self, kid: object) -> Any:
        """The key for a token's ``kid`` (the only key when the token names
        none and the set has one), or None."""
        keys = self._keys
        if not isinstance(kid, str) and kid is not None:
            return None
        found = keys.get(kid)
        if found is None and kid is None and len(keys) == 1:
            found = next(iter(keys.values()))
        return found.key if found is not None else None

    @property
    def has_keys(self) -> bool:
        return bool(self._keys) or self.url is not None

    def _due(self, kid: object) -> bool:
        if self._client is None:
            return False
        now = self._clock()
        if now - self._tried_at < self._min_interval_s:
            return False
        stale = now - self._fetched_at >= self._refresh_s
        return stale or (isinstance(kid, str) and kid not in self._keys)

    async def refresh_for(self, kid: object) -> None:
        """Fetch the set if it is stale or lacks ``kid``, within the rate limit."""
        if not self._due(kid):
            return
        async with self._lock:
            if self._due(kid):
                await trio.to_thread.run_sync(self._fetch, abandon_on_cancel=True)

    def _fetch(self) -> None:
        """Worker thread: one request; the set is swapped in one assignment."""
        assert self._client is not None
        self._tried_at = self._clock()
        self.fetches += 1
        try:
            keys = _by_kid(self._client.get_jwk_set(refresh=True))
        except (PyJWKClientError, PyJWKError, PyJWKSetError, ValueError, OSError) as exc:
            if not self._unreachable:
                self._unreachable = True
                log.warning(
                    "auth.jwks_unreachable",
                    url=self.url,
                    error=str(exc)[:200],
                    keys_kept=len(self._keys),
                    hint="tokens are verified with the last key set fetched until it answers",
                )
            return
        self._keys = keys
        self._fetched_at = self._clock()
        if self._unreachable:
            self._unreachable = False
            log.info("auth.jwks_reachable", url=self.url, keys=len(keys))
