"""``edge-agent serve``: a local OpenAI-compatible chat completions API.

The Foundry Local / Ollama pattern: apps on the device (and the demo's offline
"cloud", running a bigger model) talk to the on-device model with the OpenAI
clients they already use. ``import agent.serve`` stays light; Starlette and
the engine load with :func:`agent.serve.app.create_app`.
"""

from agent.serve.cli import add_serve_command

__all__ = ["add_serve_command"]
