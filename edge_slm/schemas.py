"""Export the JSON Schemas of the wire contract, one file per wire model.

``python -m edge_slm.schemas docs/schemas`` rewrites ``<Model>.v1.schema.json``
for every model in :data:`~edge_slm.contract.WIRE_MODELS`; with ``--check`` it
writes nothing and exits 1 when the committed files differ, so CI (and a unit
test) catch a contract change whose schemas were not regenerated.

Like the contract itself this module imports pydantic only (through
:mod:`edge_slm.contract`), never paho or onnxruntime: apps can run it cheaply.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_slm.contract import WIRE_VERSION, json_schemas

#: Dialect pydantic generates (``$defs``, ``prefixItems``): JSON Schema 2020-12.
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: Base of every ``$id``. A URN rather than an https URL: the schemas are
#: identified, not hosted, so no domain has to stay alive for the ids to hold.
ID_BASE = "urn:edge-slm:schema:"

#: Files this module owns in the output directory (other files are left alone).
_GLOB = f"*.v{WIRE_VERSION}.schema.json"


def file_name(model_name: str) -> str:
    """``Request`` -> ``Request.v1.schema.json``."""
    return f"{model_name}.v{WIRE_VERSION}.schema.json"


def schema_documents() -> dict[str, dict[str, Any]]:
    """Every wire model's schema as a standalone document, keyed by file name."""
    documents: dict[str, dict[str, Any]] = {}
    for name, schema in json_schemas().items():
        documents[file_name(name)] = {
            "$schema": JSON_SCHEMA_DIALECT,
            "$id": f"{ID_BASE}{name}.v{WIRE_VERSION}",
            **schema,
            "title": name,
        }
    return documents


def _rewrite_refs(node: Any) -> Any:
    """JSON Schema ``#/$defs/X`` -> AsyncAPI ``#/components/schemas/X``."""
    if isinstance(node, dict):
        return {
            key: value.replace("#/$defs/", "#/components/schemas/")
            if key == "$ref" and isinstance(value, str)
            else _rewrite_refs(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


def asyncapi_schemas() -> dict[str, dict[str, Any]]:
    """``components.schemas`` of docs/asyncapi.yaml: every model plus its hoisted ``$defs``.

    AsyncAPI has no ``$defs``; shared definitions live beside the models and the
    refs point there. Two models defining the same name differently is an error.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, schema in json_schemas().items():
        top = dict(schema)
        for def_name, definition in top.pop("$defs", {}).items():
            rewritten = _rewrite_refs(definition)
            if out.setdefault(def_name, rewritten) != rewritten:
                raise ValueError(f"two wire models define {def_name!r} differently")
        if name in out:
            raise ValueError(f"wire model {name!r} clashes with a definition of that name")
        out[name] = _rewrite_refs(top)
    return dict(sorted(out.items()))


def render(document: dict[str, Any]) -> str:
    """Stable text for a schema: sorted keys, two-space indent, trailing newline."""
    # ensure_ascii=False keeps descriptions such as "°C" readable in review diffs.
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: str | Path) -> list[Path]:
    """Write every schema under ``directory`` (created if needed); return the paths written.

    Stale files of this contract version (a model that no longer exists) are removed.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    documents = schema_documents()
    for stale in sorted(out.glob(_GLOB)):
        if stale.name not in documents:
            stale.unlink()
    written: list[Path] = []
    for name, document in documents.items():
        path = out / name
        path.write_text(render(document), encoding="utf-8")
        written.append(path)
    return written


def outdated_schemas(directory: str | Path) -> list[str]:
    """Why the files under ``directory`` differ from the models; empty when up to date."""
    out = Path(directory)
    documents = schema_documents()
    problems: list[str] = []
    for name, document in documents.items():
        path = out / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != render(document):
            problems.append(f"{path}: differs from the models")
    problems.extend(
        f"{stale}: no such wire model"
        for stale in sorted(out.glob(_GLOB))
        if stale.name not in documents
    )
    return problems


ASYNCAPI_MARKER = "  schemas:\n"


def update_asyncapi(path: str | Path) -> bool:
    """Rewrite the generated ``components.schemas`` tail of an AsyncAPI file.

    Everything from the last ``  schemas:`` line on is generated; the
    hand-written part above it is kept. Returns whether the file changed.
    """
    import yaml  # a dev dependency; keeps this module pydantic-only at import

    doc = Path(path)
    text = doc.read_text()
    cut = text.rindex(ASYNCAPI_MARKER)
    dumped = yaml.safe_dump({"schemas": asyncapi_schemas()}, allow_unicode=True, width=100)
    tail = "".join("  " + line if line.strip() else line for line in dumped.splitlines(True))
    new = text[:cut] + tail
    if new == text:
        return False
    doc.write_text(new)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_slm.schemas",
        description="Write the JSON Schemas of the wire contract (one file per message).",
    )
    parser.add_argument(
        "directory", nargs="?", default="docs/schemas", help="output folder (docs/schemas)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files in the folder are not up to date",
    )
    parser.add_argument(
        "--asyncapi",
        metavar="FILE",
        help="also regenerate the components.schemas section of this AsyncAPI file",
    )
    args = parser.parse_args(argv)
    if args.asyncapi and not args.check and update_asyncapi(args.asyncapi):
        print(args.asyncapi)
    if args.check:
        problems = outdated_schemas(args.directory)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"run: python -m edge_slm.schemas {args.directory}", file=sys.stderr)
            return 1
        return 0
    for path in write_schemas(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
