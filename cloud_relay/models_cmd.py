"""``cloud-relay models push``: tell a device which model to run (over-the-air update).

Publishes a retained :class:`~edge_slm.contract.DesiredModel` on
``<prefix>/<device>/model`` under the relay's identity (only relays may, per
the broker ACL), the way ``calibrate --apply`` publishes a DeviceConfig. The
device reports progress and the outcome in its retained status
(``model_update``); ``--wait`` follows it here.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid

import httpx
from pydantic import ValidationError

from cloud_relay.cli_support import add_common, settings_from
from cloud_relay.config import RelaySettings
from edge_slm.contract import DesiredModel, ModelUpdateState
from edge_slm.logs import configure_logging
from edge_slm.mqtt import Inbound
from edge_slm.topics import DeviceTopics


def add_models_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="over-the-air model updates of devices")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    p = models_sub.add_parser(
        "push",
        help="publish the model a device should run (retained)",
        description="Publish a retained desired-model message for one device. The device "
        "downloads the archive (an onnxruntime-genai folder as a tar or zip), verifies its "
        "size and sha256, imports, self-tests and swaps it, or rolls back and says why in "
        "its status.",
    )
    add_common(p)
    p.add_argument("--device", required=True, help="device id")
    p.add_argument("--model", required=True, help="model name on the device")
    p.add_argument("--url", required=True, help="http(s) URL of the archive, as the device sees it")
    p.add_argument("--sha256", required=True, help="sha256 of the archive (hex)")
    p.add_argument(
        "--size",
        type=int,
        help="archive size in bytes (default: the server's Content-Length, when this "
        "machine can reach the URL)",
    )
    p.add_argument("--format", choices=["tar", "zip"], default="tar", help="archive format")
    pin = p.add_mutually_exclusive_group()
    pin.add_argument("--pin", dest="pin", action="store_true", default=None, help="keep it loaded")
    pin.add_argument("--no-pin", dest="pin", action="store_false", help="allow idle unload")
    p.add_argument("--broker", help="broker URL (default: the config's)")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="follow the device's status until the update is done or failed (exit 1 if failed)",
    )
    p.set_defaults(func=_cmd_push)
    clear = models_sub.add_parser(
        "clear", help="clear the retained desired model (the device keeps what it runs)"
    )
    add_common(clear)
    clear.add_argument("--device", required=True, help="device id")
    clear.add_argument("--broker", help="broker URL (default: the config's)")
    clear.set_defaults(func=_cmd_clear)


def _content_length(url: str) -> int | None:
    try:
        response = httpx.head(url, follow_redirects=True, timeout=10.0)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() and int(length) > 0 else None


def publish_desired(
    settings: RelaySettings,
    desired: DesiredModel,
    *,
    wait_s: float = 0.0,
) -> dict[str, object] | None:
    """Publish ``desired`` retained at QoS 1; with ``wait_s``, return the device's final update."""
    topics = DeviceTopics(settings.topic_prefix, desired.device_id)
    final: dict[str, object] = {}
    finished = threading.Event()

    def on_status(msg: Inbound) -> None:
        try:
            update = json.loads(msg.payload).get("model_update") or {}
        except (ValueError, AttributeError):
            return
        if (update.get("sha256"), update.get("issued_at")) != (desired.sha256, desired.issued_at):
            return
        print(f"{desired.device_id}: {update.get('state')}", file=sys.stderr)
        if update.get("state") in (ModelUpdateState.DONE, ModelUpdateState.FAILED):
            final.update(update)
            finished.set()

    conn = settings.mqtt.connection(
        client_id=f"{settings.mqtt.client_id}-models-{uuid.uuid4().hex[:6]}",
        on_connect=lambda: conn.subscribe([(topics.status, 1)]) if wait_s else None,
        on_message=on_status,
    )
    if not conn.start(connect_timeout_s=settings.mqtt.connect_timeout_s):
        raise ConnectionError(f"cannot reach the broker at {settings.mqtt.url}")
    try:
        conn.publish(topics.model, desired.to_wire(), qos=1, retain=True)
        if wait_s and not finished.wait(wait_s):
            return None
    finally:
        conn.stop()
    return final if wait_s else {}


def _cmd_push(args: argparse.Namespace) -> int:
    configure_logging("WARNING", "console")
    settings = settings_from(args, **{"mqtt.broker": args.broker})
    if settings is None:
        return 2
    size = args.size if args.size is not None else _content_length(args.url)
    try:
        desired = DesiredModel(
            device_id=args.device,
            name=args.model,
            url=args.url,
            sha256=args.sha256.lower(),
            size=size,
            format=args.format,
            pin=args.pin,
            issued_at=time.time(),
            issued_by="cloud-relay models push",
        )
    except ValidationError as exc:
        print(f"invalid push: {exc}", file=sys.stderr)
        return 2
    outcome = publish_desired(settings, desired, wait_s=args.wait)
    print(
        f"pushed {desired.name} (sha256 {desired.sha256[:12]}, "
        f"{size if size is not None else 'unknown'} bytes) to {desired.device_id}"
    )
    if not args.wait:
        return 0
    if outcome is None:
        print(f"no outcome from {desired.device_id} within {args.wait:.0f} s", file=sys.stderr)
        return 1
    if outcome.get("state") == ModelUpdateState.FAILED:
        print(
            f"failed at {outcome.get('failed_step')}: {outcome.get('reason')} "
            "(the device kept its previous model)",
            file=sys.stderr,
        )
        return 1
    print(f"{desired.device_id} runs {desired.name} {desired.sha256[:12]}")
    return 0


def _cmd_clear(args: argparse.Namespace) -> int:
    configure_logging("WARNING", "console")
    settings = settings_from(args, **{"mqtt.broker": args.broker})
    if settings is None:
        return 2
    conn = settings.mqtt.connection(
        client_id=f"{settings.mqtt.client_id}-models-{uuid.uuid4().hex[:6]}",
        on_connect=lambda: None,
        on_message=lambda _msg: None,
    )
    if not conn.start(connect_timeout_s=settings.mqtt.connect_timeout_s):
        print(f"cannot reach the broker at {settings.mqtt.url}", file=sys.stderr)
        return 2
    try:
        topic = DeviceTopics(settings.topic_prefix, args.device).model
        conn.publish(topic, b"", qos=1, retain=True)  # MQTT 5 §3.3.1.3: clears the retained
    finally:
        conn.stop()
    print(f"cleared the desired model of {args.device}")
    return 0
