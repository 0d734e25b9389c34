"""Shared pieces of edge-slm: the wire contract, topic names, MQTT adapter, logging."""

__version__ = "0.1.0"
