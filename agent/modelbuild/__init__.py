"""Workstation tooling that makes models: build from GGUF, fidelity, fine-tuning.

Needs the ``build`` extra (torch, transformers, gguf, onnx, peft), never installed on
a device; the device runtime (cache, catalog, download, OTA) is :mod:`agent.models`,
which never imports this package. Each module imports its heavy dependencies inside
the functions that need them; this ``__init__`` imports nothing.
"""
