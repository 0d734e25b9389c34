"""The agent's run path imports none of the build tooling's heavy packages.

A device installs ``edge-slm`` without the ``build`` extra: a module-level
``import torch`` anywhere the daemon, its CLI, the engine, skills or the local API
import would make ``edge-agent run`` fail there. The check runs in a fresh
interpreter, as a device starts, since this test process may have torch loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# The build extra's packages (``onnx`` is the python package; onnxruntime is the
# runtime's and belongs on the device).
BUILD_ONLY = ("torch", "transformers", "peft", "gguf", "accelerate", "onnx", "onnx_ir")

# Import the daemon's composition and build what needs no model: the CLI's parser
# (every sub-command's, ``models`` and ``serve`` included), settings, the daemon
# object with its worker, router, intake and MQTT client (not connected), skills
# and the model cache.
PROGRAM = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path

    import agent.cli, agent.daemon, agent.worker, agent.intake, agent.answering
    import agent.engine.engine, agent.engine.holder, agent.engine.selftest
    import agent.skills, agent.skills.embedding, agent.skills.classify
    import agent.serve.app, agent.serve.cli, agent.serve.runner
    import agent.models, agent.models.cli, agent.models.ota, agent.models.download
    import agent.models.embedders
    from agent.config import load_settings
    from agent.daemon import AgentDaemon
    from agent.models import ModelCache
    from agent.skills import SkillRegistry

    parser = agent.cli.build_parser()
    parser.parse_args(["models", "list"])
    settings = load_settings(device_id="dev-imports")
    daemon = AgentDaemon(settings)
    SkillRegistry().all()
    ModelCache(Path(tempfile.mkdtemp())).list()
    print(json.dumps(sorted(sys.modules)))
    """
)


def test_run_path_imports_no_build_packages() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, env=env
    )
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    tops = {name.split(".")[0] for name in loaded}
    assert sorted(tops & set(BUILD_ONLY)) == []
    # The workstation tooling stays out too; only tune's settings (for --help) load.
    tooling = {m for m in loaded if m.startswith("agent.modelbuild.")}
    assert tooling <= {"agent.modelbuild.params"}
