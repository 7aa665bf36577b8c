"""A verified token's claims -> who is watching: the identity mapping of a
stream endpoint (``[streams.identity]``), pure.

Identity providers put the same facts in different places: ``role`` or
``realm_access.roles`` (Keycloak), a tenant as ``tenant``, as the first key
of an ``organization`` object, or as the first entry of a list.  Rather than
one fixed shape, an endpoint lists dot paths to try in order, and which token
roles mean ``admin`` (every tenant) or ``client`` (its own).  The outcome is an
:class:`Identity`, or a :class:`NotAllowed` naming the reason (``role`` or
``tenant``), which the endpoint turns into its configured close code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bridge.core.extract import MISSING, field_path, get_path
from bridge.core.settings import StreamIdentity

Role = Literal["admin", "client"]


class NotAllowed(Exception):
    """A valid token without the right to watch; ``reason`` is ``role`` or ``tenant``."""

    def __init__(self, reason: Literal["role", "tenant"], message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller: its role, and the tenant it is held to (None: every tenant;
    an admin is held to none unless the deployment names one)."""

    role: Role
    tenant: str | None
    subject: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class IdentityRules:
    """``[streams.identity]`` compiled: paths split once."""

    role_paths: tuple[tuple[str, ...], ...]
    tenant_paths: tuple[tuple[str, ...], ...]
    admin_roles: frozenset[str]
    client_roles: frozenset[str]
    without_tenant: Literal["refuse", "all"]
    fixed_tenant: str | None

    @classmethod
    def from_settings(cls, settings: StreamIdentity) -> IdentityRules:
        return cls(
            tuple(field_path(p) for p in settings.role_claims),
            tuple(field_path(p) for p in settings.tenant_claims),
            frozenset(settings.admin_roles),
            frozenset(settings.client_roles),
            settings.without_tenant,
            settings.tenant,
        )


def _roles(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _tenant(value: object) -> str | None:
    """A tenant claim: a string, the first key of an object, the first string of a list."""
    if isinstance(value, dict):
        value = next(iter(value), None)
    elif isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v), None)
    return value if isinstance(value, str) and value else None


def find_roles(claims: Mapping[str, Any], paths: tuple[tuple[str, ...], ...]) -> list[str]:
    """The roles at the first path that holds any."""
    for path in paths:
        roles = _roles(get_path(claims, path))
        if roles:
            return roles
    return []


def find_tenant(claims: Mapping[str, Any], paths: tuple[tuple[str, ...], ...]) -> str | None:
    """The tenant at the first path that holds a usable one."""
    for path in paths:
        value = get_path(claims, path)
        if value is not MISSING:
            tenant = _tenant(value)
            if tenant is not None:
                return tenant
    return None


def identify(claims: Mapping[str, Any], rules: IdentityRules) -> Identity:
    """Role first (an admin role wins over a client role), then the tenant."""
    roles = find_roles(claims, rules.role_paths)
    role: Role
    if rules.admin_roles.intersection(roles):
        role = "admin"
    elif rules.client_roles.intersection(roles):
        role = "client"
    else:
        accepted = sorted(rules.admin_roles | rules.client_roles)
        raise NotAllowed("role", f"roles {roles[:5]!r} not accepted: need one of {accepted}")
    subject = claims.get("sub")
    subject = subject if isinstance(subject, str) else None
    if rules.fixed_tenant is not None:
        return Identity(role, rules.fixed_tenant, subject)
    if role == "admin":
        return Identity(role, None, subject)  # every tenant, or the one it asks for
    tenant = find_tenant(claims, rules.tenant_paths)
    if tenant is None and role == "client" and rules.without_tenant == "refuse":
        raise NotAllowed("tenant", "the token names no tenant")
    return Identity(role, tenant, subject)
