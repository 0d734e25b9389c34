"""``cloud_relay.authz``: the cloud broker's policy as a dynamic-security document.

The broker's behaviour with this document is tested against a real mosquitto in
tests/security/test_authz.py; these checks pin the document's shape and the
least-privilege properties that hold for any fleet.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloud_relay.authz import (
    RELAY_PUBLISHES,
    RELAY_ROLE,
    AclType,
    device_role,
    dynsec_config,
    dynsec_json,
)
from edge_slm.topics import DeviceTopics, relay_status_filter, skill_head_filter

DEVICES = ["dev-b", "dev-a"]
RELAYS = ["relay-2", "relay-1"]


def _roles(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {r["rolename"]: r["acls"] for r in doc["roles"]}


def test_everything_not_granted_is_denied() -> None:
    doc = dynsec_config(DEVICES, RELAYS)
    assert doc["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    acls = [acl for role in doc["roles"] for acl in role["acls"]]
    assert all(acl["allow"] is True for acl in acls)
    # SUBSCRIBE is compared literally, never as a pattern that would match `#`.
    assert {acl["acltype"] for acl in acls} == {t.value for t in AclType}
    topics = {acl["topic"] for acl in acls}
    assert not {t for t in topics if t.startswith(("$SYS", "$CONTROL")) or "#" in t}


def test_one_client_per_identity_without_password() -> None:
    doc = dynsec_config(DEVICES, RELAYS)
    assert [c["username"] for c in doc["clients"]] == ["dev-a", "dev-b", "relay-1", "relay-2"]
    assert all(set(c) == {"username", "textname", "roles"} for c in doc["clients"])
    by_user = {c["username"]: [r["rolename"] for r in c["roles"]] for c in doc["clients"]}
    assert by_user["dev-a"] == [device_role("dev-a")]
    assert by_user["relay-2"] == [RELAY_ROLE]


def test_a_device_is_confined_to_its_own_topics() -> None:
    acls = _roles(dynsec_config(DEVICES, RELAYS))[device_role("dev-a")]
    own = DeviceTopics("slm", "dev-a")
    assert {(a["acltype"], a["topic"]) for a in acls} == {
        (AclType.PUBLISH.value, own.escalation),
        (AclType.PUBLISH.value, own.status),
        (AclType.PUBLISH.value, own.telemetry),
        (AclType.SUBSCRIBE.value, own.cloud),
        (AclType.RECEIVE.value, own.cloud),
        (AclType.SUBSCRIBE.value, own.config),
        (AclType.RECEIVE.value, own.config),
        (AclType.SUBSCRIBE.value, own.model),
        (AclType.RECEIVE.value, own.model),
        (AclType.SUBSCRIBE.value, relay_status_filter("slm")),
        (AclType.RECEIVE.value, relay_status_filter("slm")),
        (AclType.SUBSCRIBE_PATTERN.value, skill_head_filter("slm")),
        (AclType.RECEIVE.value, skill_head_filter("slm")),
    }


def test_relay_only_topics_are_published_by_relays_only() -> None:
    roles = _roles(dynsec_config(DEVICES, RELAYS, prefix="fleet", share_group="g"))
    published = {
        role: {a["topic"] for a in acls if a["acltype"] == AclType.PUBLISH.value}
        for role, acls in roles.items()
    }
    relay_only = {f"fleet/+/{leaf}" for leaf in RELAY_PUBLISHES} | {
        "fleet/_relays/+/status",
        "fleet/_skills/+/head/+",
    }
    assert published[RELAY_ROLE] == relay_only
    for role, topics in published.items():
        if role != RELAY_ROLE:
            assert not {t for t in topics if t.rsplit("/", 1)[1] in RELAY_PUBLISHES}, role
    subscribed = {a["topic"] for a in roles[RELAY_ROLE] if a["acltype"] == "subscribeLiteral"}
    assert "$share/g/fleet/+/escalation" in subscribed
    assert "fleet/+/status" in subscribed


def test_json_is_stable() -> None:
    text = dynsec_json(DEVICES, RELAYS)
    assert text == dynsec_json(list(reversed(DEVICES)), list(reversed(RELAYS)))
    assert json.loads(text) == dynsec_config(DEVICES, RELAYS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"share_group": "a/b"}, "group"),
        ({"share_group": "#"}, "group"),
        ({"prefix": "+"}, "prefix"),
        ({"devices": ["x/y"]}, "device id"),
        ({"devices": ["relay-1"]}, "both"),
    ],
)
def test_invalid_input_is_refused(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"devices": DEVICES, "relays": RELAYS, **kwargs}
    with pytest.raises(ValueError, match=match):
        dynsec_config(args.pop("devices"), args.pop("relays"), **args)
