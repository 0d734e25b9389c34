"""Messages the relays send this agent (config, model, cloud replies, heads), decoded on
the network thread: the one version check (``decode``), then, for a message addressed
to one device, that it names this one. A message that fails either is logged under its
own rejection event and dropped; it is never an exception on the network thread."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from edge_slm.contract import WireError, decode
from edge_slm.logs import get_logger

log = get_logger("agent.inbound")

M = TypeVar("M", bound=BaseModel)


def decode_or_log(
    model: type[M], payload: bytes, *, rejected: str, device_id: str | None = None, **context: Any
) -> M | None:
    """``payload`` as ``model``, or None after a ``rejected`` warning. With ``device_id``,
    a message for another device is rejected too."""
    try:
        message = decode(model, payload)
    except WireError as exc:
        log.warning(rejected, **context, code=exc.code.value, error=str(exc)[:300])
        return None
    if device_id is not None:
        claimed = getattr(message, "device_id", None)
        if claimed != device_id:
            log.warning(rejected, **context, error="device_id mismatch", device_id=claimed)
            return None
    return message
