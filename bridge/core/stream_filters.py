"""A configured stream endpoint's filters: the query parameters a client
filters with (names, aliases, comma lists) and the live actions it sends
(names, fields, replies), pure.

The built-in endpoints keep :func:`bridge.core.events.initial_filters` and
:func:`bridge.core.events.apply_action`; these are their declarative
counterparts for ``[[streams]]`` (``[streams.filters]``, ``[streams.actions]``),
so a dashboard written for another server (``?device_ids=A,B``,
``{"action": "subscribe", "device_id": "A"}``) works unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from bridge.core.claims import Identity
from bridge.core.events import FilterError, Filters, TenantForbidden, bounded_names
from bridge.core.settings import StreamActions, StreamFilters

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class QueryRules:
    """``[streams.filters]``: parameter names per filter."""

    device: tuple[str, ...]
    metric: tuple[str, ...]
    group: tuple[str, ...]
    tenant: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: StreamFilters) -> QueryRules:
        return cls(
            tuple(settings.device),
            tuple(settings.metric),
            tuple(settings.group),
            tuple(settings.tenant),
        )


def _listed(
    query: Mapping[str, list[str]], names: tuple[str, ...], what: str
) -> frozenset[str] | None:
    """Every value of every alias, comma lists split; None when none given (all)."""
    items = [
        item.strip() for name in names for value in query.get(name, []) for item in value.split(",")
    ]
    return bounded_names(items, what) or None


def query_filters(rules: QueryRules, identity: Identity, query: Mapping[str, list[str]]) -> Filters:
    """The filters of a new connection.  A caller scoped to a tenant sees only
    it (asking for another is :class:`TenantForbidden`); one that is not (an
    admin, or one organisation) sees every tenant or the one it asks for."""
    asked = _listed(query, rules.tenant, "tenants")
    if asked is not None and len(asked) > 1:
        raise FilterError("tenant may be given once")
    tenant = next(iter(asked)) if asked else None
    if identity.tenant is not None:
        if tenant is not None and tenant != identity.tenant:
            raise TenantForbidden(f"tenant {tenant!r} is not allowed for this token")
        tenant = identity.tenant
    return Filters(
        tenant,
        _listed(query, rules.device, "devices"),
        _listed(query, rules.metric, "metrics"),
        _listed(query, rules.group, "groups"),
    )


# --------------------------------------------------------------------------- actions
def _field_names(
    body: Mapping[str, Any], fields: list[str], what: str
) -> tuple[frozenset[str], dict[str, Any]]:
    """The names given in any of ``fields`` (a string or a list of strings
    each), and those fields as sent, for an echo reply."""
    given: dict[str, Any] = {}
    names: list[str] = []
    for name in fields:
        if name not in body:
            continue
        value = body[name]
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            names.extend(value)
        else:
            raise FilterError(f"{name} must be a string or a list of strings")
        given[name] = value
    return bounded_names(names, what), given


class ActionRules:
    """``[streams.actions]`` compiled: action name -> handler."""

    def __init__(self, settings: StreamActions) -> None:
        self.settings = settings
        self._handlers = {
            settings.subscribe: self._subscribe,
            settings.unsubscribe: self._unsubscribe,
            settings.set_metrics: self._set_metrics,
            settings.clear_filters: self._clear,
        }

    def _reply(self, kind: str, given: dict[str, Any], filters: Filters) -> bytes:
        if self.settings.replies == "echo":
            return _encode({"type": kind, **given})
        return _encode({"type": kind, **given, "filters": filters.describe()})

    def error(self, message: str) -> bytes:
        return _encode({"type": self.settings.error, "message": message})

    def apply(self, filters: Filters, message: str | bytes) -> tuple[Filters, bytes]:
        """A client's message -> its new filters and the reply; anything wrong
        is an error reply with the filters unchanged (the connection stays)."""
        try:
            body = msgspec.json.decode(message)
        except msgspec.DecodeError as exc:
            return filters, self.error(f"invalid JSON: {exc}")
        if not isinstance(body, dict):
            return filters, self.error("expected a JSON object")
        name = body.get(self.settings.field)
        handler = self._handlers.get(name) if isinstance(name, str) else None
        if handler is None:
            return filters, self.error(self.settings.unknown.replace("{action}", str(name)))
        try:
            return handler(filters, body)
        except FilterError as exc:
            return filters, self.error(f"{name}: {exc}")

    def _targets(
        self, body: dict[str, Any]
    ) -> tuple[frozenset[str], frozenset[str], dict[str, Any]]:
        settings = self.settings
        devices, given = _field_names(body, settings.device_fields, "devices")
        groups, given_groups = _field_names(body, settings.group_fields, "groups")
        if not devices and not groups:
            raise FilterError(
                f"give one of {', '.join(settings.device_fields + settings.group_fields)}"
            )
        return devices, groups, given | given_groups

    def _subscribe(self, filters: Filters, body: dict[str, Any]) -> tuple[Filters, bytes]:
        devices, groups, given = self._targets(body)
        # Narrowed from then on: a device passes when listed or in a listed group.
        new = Filters(
            filters.tenant,
            bounded_names((filters.devices or frozenset()) | devices, "devices"),
            filters.metrics,
            bounded_names((filters.groups or frozenset()) | groups, "groups"),
        )
        return new, self._reply(self.settings.subscribed, given, new)

    def _unsubscribe(self, filters: Filters, body: dict[str, Any]) -> tuple[Filters, bytes]:
        devices, groups, given = self._targets(body)
        if filters.devices is None and filters.groups is None:
            # Receiving every device: nothing to take away from.
            return filters, self._reply(self.settings.unsubscribed, given, filters)
        new = Filters(
            filters.tenant,
            (filters.devices or frozenset()) - devices,
            filters.metrics,
            (filters.groups or frozenset()) - groups,
        )
        return new, self._reply(self.settings.unsubscribed, given, new)

    def _set_metrics(self, filters: Filters, body: dict[str, Any]) -> tuple[Filters, bytes]:
        metrics, given = _field_names(body, self.settings.metric_fields, "metrics")
        if not given:
            raise FilterError(f"give {' or '.join(self.settings.metric_fields)}")
        new = Filters(filters.tenant, filters.devices, metrics or None, filters.groups)
        return new, self._reply(self.settings.metrics_updated, given, new)

    def _clear(self, filters: Filters, _body: dict[str, Any]) -> tuple[Filters, bytes]:
        new = Filters(filters.tenant)
        return new, self._reply(self.settings.filters_cleared, {}, new)
