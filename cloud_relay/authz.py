"""Who may do what on the cloud broker, rendered for mosquitto's dynamic security plugin.

The cloud broker (``deploy/mosquitto/cloud.conf``) authenticates every client by
its certificate and takes the CN as the username (``use_identity_as_username``).
Authorization is the dynamic security plugin's, configured by the JSON document
:func:`dynsec_config` builds, which ``cloud-relay pki`` writes next to the CRL
(``PKI/dynamic-security.json``) after every issue and revoke.

Why the plugin and not ``acl_file``: mosquitto 2.0's ``acl_file`` grants every
SUBSCRIBE (eclipse/mosquitto#2042) and checks ``read`` only per message on
delivery. A device could therefore join the relays' shared subscription
(``$share/relays/slm/+/escalation``, MQTT 5 §4.8.2): the broker deals it its turn
of escalations, the read check drops them, and they never reach a relay. The
plugin checks SUBSCRIBE itself (``subscribeLiteral`` below) and refuses it with
SUBACK 0x87 Not authorized, so a device never becomes a group member.

What mosquitto 2.0.11's plugin can and cannot do, as verified against it in
tests/security/test_authz.py:

* it finds a certificate-authenticated client by username (the CN) even though
  no password is ever checked; a username with no client entry gets nothing;
* ACL topics are taken literally: 2.0.11 substitutes no ``%u``/``%c`` (a
  ``slm/%u/escalation`` grant lets nobody publish), so each device gets its own
  role, ``device-<id>``;
* it reads its file once, at start: a SIGHUP does not reload it. A new or
  removed device takes effect when mosquitto restarts.

The policy itself is the tables below: leaf names of
:class:`edge_slm.topics.DeviceTopics`, per identity kind. Everything not
listed is denied (``defaultACLAccess``), ``#``, ``$SYS/#`` and the plugin's own
``$CONTROL/dynamic-security/#`` included.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from edge_slm.topics import (
    DeviceTopics,
    fleet_filter,
    relay_status_filter,
    shared,
    skill_head_filter,
)

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_SHARE_GROUP",
    "DEVICE_PUBLISHES",
    "DEVICE_RECEIVES",
    "RELAY_PUBLISHES",
    "RELAY_READS",
    "RELAY_ROLE",
    "RELAY_SHARED_READS",
    "AclType",
    "device_role",
    "dynsec_config",
    "dynsec_json",
]

DEFAULT_PREFIX = "slm"  # cloud_relay and agent settings: topic_prefix
DEFAULT_SHARE_GROUP = "relays"  # cloud_relay settings: share_group

# -- the policy -----------------------------------------------------------------------
# A device (or its local broker's bridge) sends escalations, its retained status and its
# telemetry, and receives the cloud's answers, its run-time config and its desired model
# (over-the-air updates, `cloud-relay models push`): its own topics only, every relay's
# online/offline (relay_status_filter) and the skill heads the relays learn for the whole
# fleet (skill_head_filter, `cloud-relay learn`); only relays publish those two. A device
# subscribes to its own encoder's heads (`<prefix>/_skills/+/head/<encoder>`), which the
# grant names by pattern: the encoder is the device's setting, not its identity's.
DEVICE_PUBLISHES: tuple[str, ...] = ("escalation", "status", "telemetry")
DEVICE_RECEIVES: tuple[str, ...] = ("cloud", "config", "model")
# Relay-only topics: only a relay identity may publish them, for any device (the retained
# `config` of `cloud-relay calibrate --apply` included). A new relay -> device topic goes
# here and, for the devices to read it, in DEVICE_RECEIVES.
RELAY_PUBLISHES: tuple[str, ...] = ("cloud", "config", "model")
# Read by relays from every device: through the share group (`$share/<group>/...`, one
# relay per message) or plainly (every relay; retained messages reach plain subscribers
# only, MQTT 5 §4.8.2, hence `status`). Both forms of the shared ones are granted, as
# the relay's `shared_telemetry = false` subscribes plainly.
RELAY_SHARED_READS: tuple[str, ...] = ("escalation", "telemetry")
RELAY_READS: tuple[str, ...] = ("status",)

RELAY_ROLE = "relay"


class AclType(StrEnum):
    """The plugin's ACL types used here (mosquitto 2.0 dynamic security)."""

    PUBLISH = "publishClientSend"  # the client publishes
    RECEIVE = "publishClientReceive"  # the broker delivers to the client
    # The filter of a SUBSCRIBE, compared as a string: a grant of `slm/a/cloud` does not
    # grant `slm/+/cloud` or `#`. (subscribePattern would match filters against filters.)
    SUBSCRIBE = "subscribeLiteral"
    # A filter granted by pattern: `+` in the grant admits one level of the client's
    # filter, a name or `+`, never `#` (for the heads' encoder level only).
    SUBSCRIBE_PATTERN = "subscribePattern"


def device_role(device_id: str) -> str:
    """The role holding one device's ACLs (2.0.11 has no %u, so one role per device)."""
    return f"device-{device_id}"


def _acl(kind: AclType, topic: str) -> dict[str, Any]:
    return {"acltype": kind.value, "topic": topic, "priority": 0, "allow": True}


def _device_acls(prefix: str, device_id: str) -> list[dict[str, Any]]:
    topics = DeviceTopics(prefix, device_id).all()
    acls = [_acl(AclType.PUBLISH, topics[leaf]) for leaf in DEVICE_PUBLISHES]
    for leaf in DEVICE_RECEIVES:
        acls += [_acl(AclType.SUBSCRIBE, topics[leaf]), _acl(AclType.RECEIVE, topics[leaf])]
    # Every relay's online/offline (its agent re-sends the outbox when one comes online).
    relays = relay_status_filter(prefix)
    acls += [_acl(AclType.SUBSCRIBE, relays), _acl(AclType.RECEIVE, relays)]
    heads = skill_head_filter(prefix)  # every encoder's: the device subscribes to its own
    acls += [_acl(AclType.SUBSCRIBE_PATTERN, heads), _acl(AclType.RECEIVE, heads)]
    return acls


def _relay_acls(prefix: str, share_group: str) -> list[dict[str, Any]]:
    acls = [_acl(AclType.PUBLISH, fleet_filter(prefix, leaf)) for leaf in RELAY_PUBLISHES]
    acls.append(_acl(AclType.PUBLISH, relay_status_filter(prefix)))  # relays only
    acls.append(_acl(AclType.PUBLISH, skill_head_filter(prefix)))  # relays only
    for leaf in RELAY_SHARED_READS:
        plain = fleet_filter(prefix, leaf)
        acls += [
            _acl(AclType.SUBSCRIBE, shared(share_group, plain)),  # as the relay subscribes
            _acl(AclType.SUBSCRIBE, plain),
            _acl(AclType.RECEIVE, plain),
        ]
    for leaf in RELAY_READS:
        plain = fleet_filter(prefix, leaf)
        acls += [_acl(AclType.SUBSCRIBE, plain), _acl(AclType.RECEIVE, plain)]
    return acls


def dynsec_config(
    devices: Iterable[str],
    relays: Iterable[str],
    *,
    prefix: str = DEFAULT_PREFIX,
    share_group: str = DEFAULT_SHARE_GROUP,
) -> dict[str, Any]:
    """The plugin's whole configuration for these device ids and relay names.

    A client entry per identity, keyed by username (= certificate CN), without a
    password: with ``use_identity_as_username`` mosquitto never asks the plugin to
    check one. Output is sorted, so regenerating an unchanged fleet changes nothing.
    """
    device_ids, relay_names = sorted(set(devices)), sorted(set(relays))
    clash = set(device_ids) & set(relay_names)
    if clash:
        raise ValueError(f"identities are both a device and a relay: {sorted(clash)}")
    clients = [
        {"username": d, "textname": "device", "roles": [{"rolename": device_role(d)}]}
        for d in device_ids
    ] + [
        {"username": r, "textname": "relay", "roles": [{"rolename": RELAY_ROLE}]}
        for r in relay_names
    ]
    roles = [{"rolename": RELAY_ROLE, "acls": _relay_acls(prefix, share_group)}] + [
        {"rolename": device_role(d), "acls": _device_acls(prefix, d)} for d in device_ids
    ]
    return {
        # Deny what no role grants. Unsubscribing is harmless and always allowed.
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def dynsec_json(
    devices: Iterable[str],
    relays: Iterable[str],
    *,
    prefix: str = DEFAULT_PREFIX,
    share_group: str = DEFAULT_SHARE_GROUP,
) -> str:
    """:func:`dynsec_config` as the file the plugin reads (``plugin_opt_config_file``)."""
    doc = dynsec_config(devices, relays, prefix=prefix, share_group=share_group)
    return json.dumps(doc, indent=2) + "\n"
