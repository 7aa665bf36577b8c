"""Identity mapping of a configured stream endpoint (bridge.core.claims):
each token shape of the identity providers the issue names."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.core.claims import Identity, IdentityRules, NotAllowed, identify
from bridge.core.settings import StreamIdentity

PORTAL = IdentityRules.from_settings(
    StreamIdentity(
        role_claims=["realm_access.roles"],
        tenant_claims=["organization", "tenant_id"],
        admin_roles=[],
        client_roles=["customer", "tenant-admin", "operator", "operator-admin"],
    )
)
CHANNELS = IdentityRules.from_settings(StreamIdentity(without_tenant="all"))


@pytest.mark.parametrize(
    ("claims", "tenant"),
    [
        (
            {
                "realm_access": {"roles": ["offline", "customer"]},
                "organization": {"acme": {"id": 1}},
            },
            "acme",
        ),
        ({"realm_access": {"roles": ["operator"]}, "organization": ["", 3, "globex"]}, "globex"),
        ({"realm_access": {"roles": ["tenant-admin"]}, "organization": "initech"}, "initech"),
        ({"realm_access": {"roles": ["customer"]}, "organization": {}, "tenant_id": "t9"}, "t9"),
        ({"realm_access": {"roles": ["customer"]}, "tenant_id": "t9"}, "t9"),
    ],
)
def test_keycloak_tenant_from_object_list_string_or_fallback(claims: Any, tenant: str) -> None:
    assert identify(claims, PORTAL) == Identity("client", tenant, None)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"realm_access": {"roles": ["viewer"]}, "tenant_id": "t"}, "role"),
        ({"realm_access": {}, "tenant_id": "t"}, "role"),
        ({"role": "customer", "tenant_id": "t"}, "role"),
        ({"realm_access": {"roles": ["customer"]}}, "tenant"),
        ({"realm_access": {"roles": ["customer"]}, "organization": [1, 2]}, "tenant"),
    ],
)
def test_refusals_name_their_reason(claims: Any, reason: str) -> None:
    with pytest.raises(NotAllowed) as caught:
        identify(claims, PORTAL)
    assert caught.value.reason == reason


def test_one_organisation_client_without_tenant_sees_every_tenant() -> None:
    assert identify({"role": "client", "sub": "u1"}, CHANNELS) == Identity("client", None, "u1")
    assert identify({"role": "client", "tenant": "t1"}, CHANNELS).tenant == "t1"
    assert identify({"role": "admin", "tenant": "t1"}, CHANNELS) == Identity("admin", None, None)
    with pytest.raises(NotAllowed):
        identify({"role": "viewer"}, CHANNELS)


def test_role_as_one_string_or_a_list_and_admin_wins() -> None:
    rules = IdentityRules.from_settings(
        StreamIdentity(role_claims=["roles", "role"], admin_roles=["ops"], client_roles=["c"])
    )
    assert identify({"roles": ["c", "ops"]}, rules).role == "admin"
    assert identify({"role": "c", "tenant": "t"}, rules).role == "client"


def test_single_tenant_deployment_names_the_tenant() -> None:
    rules = IdentityRules.from_settings(StreamIdentity(tenant="plant-1"))
    assert identify({"role": "client"}, rules).tenant == "plant-1"
    assert identify({"role": "admin", "tenant": "other"}, rules).tenant == "plant-1"
