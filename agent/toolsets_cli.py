"""``edge-agent toolsets ...``: list the tool sets, fit a set's act calibration for a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent import fit_cli


def add_toolsets_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fit = fit_cli.add_list_and_fit(
        sub,
        "toolsets",
        help="act tool sets: list them, fit their calibration",
        list_help="the built-in tool sets, their tools and fitted models",
        list_cmd=_cmd_list,
        fit_help="fit a tool set's act confidence calibration for one edge model",
        fit_description="Run act with the tool set on the dev split of labelled commands, fit "
        "P(the call is exactly right) from the raw confidence, print the expected "
        "calibration error before and after (5-fold cross-validated) and the AUROC, and "
        "store the fit in the set's TOML file.",
        fit_cmd=_cmd_fit,
    )
    fit.add_argument("--tool-set", required=True, help="tool set name, e.g. home")
    fit_cli.add_fit_options(
        fit,
        data_help="JSONL of {request, gold: {call}} (tests/data/eval/home_actions.jsonl); only "
        "its dev split (the rule of bench.eval_data.split_of) is used, never the held-out one",
        config_help="agent TOML config (model, cache, threads)",
    )
    fit.add_argument(
        "--write",
        type=Path,
        help="TOML file to write the fit into (default: the built-in set's file)",
    )


def _cmd_list(_args: argparse.Namespace) -> int:
    from agent.actions import BUILTIN_DIR, ToolSets

    sets = ToolSets()
    for path in sorted(BUILTIN_DIR.glob("*.toml")):
        spec = sets.get(path.stem)
        if spec is None:
            continue
        high = [t.name for t in spec.tools if t.risk == "high"]
        print(
            f"{path.stem}: {len(spec.tools)} tools"
            + (f" ({', '.join(high)} high-risk)" if high else "")
            + f", {len(spec.exemplars)} exemplars; fitted for: "
            + (", ".join(sorted(spec.fits)) or "none")
        )
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from agent.actions import BUILTIN_DIR, TOOL_SETS
    from agent.daemon import resolve_model
    from agent.engine.engine import Engine
    from agent.modelbuild.tune_data import eval_split_of
    from agent.models.errors import ModelError
    from agent.toolset_fit import fit_pairs, load_calls, observe

    settings = fit_cli.fit_settings(args, device_id="toolsets-fit")
    if settings is None:
        return fit_cli.EXIT_BAD_INPUT
    spec = TOOL_SETS.get(args.tool_set)
    if spec is None:
        print(f"error: no tool set {args.tool_set!r}", file=sys.stderr)
        return fit_cli.EXIT_BAD_INPUT
    builtin = BUILTIN_DIR / f"{args.tool_set}.toml"
    target = args.write or (builtin if builtin.exists() else None)
    if target is None and not args.dry_run:
        print("error: give --write for a tool set that is not built in", file=sys.stderr)
        return fit_cli.EXIT_BAD_INPUT
    try:
        # The dev split only: the fit never sees a held-out item.
        items = [i for i in load_calls(args.data) if eval_split_of(i[0].id) == "dev"]
        model = resolve_model(settings)
    except (ModelError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return fit_cli.EXIT_BAD_INPUT
    engine = Engine(model.path, name=model.name, provider="cpu", threads=settings.model.threads)
    pairs, skipped = observe(engine, args.tool_set, spec, items)
    try:
        fit = fit_pairs(pairs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return fit_cli.EXIT_BAD_INPUT
    right = sum(ok for _, ok in pairs)
    print(
        f"{args.tool_set} on {model.name}: {len(items)} dev items ({skipped} exemplars left "
        f"out), {len(pairs)} tool calls, {right} exactly right\n"
        f"  calibration: sigmoid({fit.calibration.a:.3f} * logit(raw) "
        f"{fit.calibration.b:+.3f})\n"
        f"  expected calibration error (5-fold cross-validated): "
        f"{fit.ece_before:.3f} -> {fit.ece_after:.3f}; AUROC {fit.auroc:.3f}"
    )
    return fit_cli.finish_fit(model.name, fit, target=target, dry_run=args.dry_run)
