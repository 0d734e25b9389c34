"""``edge-agent skills ...``: list the skills, fit a skill's calibration for a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent import fit_cli


def add_skills_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fit = fit_cli.add_list_and_fit(
        sub,
        "skills",
        help="classify skills: list them, fit their calibration",
        list_help="the built-in skills, their labels and fitted models",
        list_cmd=_cmd_list,
        fit_help="fit a skill's calibration for one edge model on labelled data",
        fit_description="Run the model (and the embedder) on every labelled example, fit the "
        "skill's calibrators, print the expected calibration error before and after "
        "(5-fold cross-validated), and store the fit in the skill's TOML file.",
        fit_cmd=_cmd_fit,
    )
    fit.add_argument("skill", help="skill name, e.g. home_intents")
    fit_cli.add_fit_options(
        fit,
        data_help="JSONL of labelled requests: the eval format ({request, gold: {label}}), "
        "{request, answer}, or the relay's `cloud-relay export` (the cloud's label)",
        config_help="agent TOML config (model, cache, embedder)",
    )
    fit.add_argument(
        "--skill-file",
        type=Path,
        help="TOML file of the skill to write the fit into (default: the built-in skill's "
        "file, for a built-in skill)",
    )
    fit.add_argument("--no-embedder", action="store_true", help="fit the SLM alone")
    fit.add_argument(
        "--scoring",
        choices=["full", "prefix"],
        default="full",
        help="the SLM's label scores: every token of each verbalizer (full), or only its "
        "distinguishing prefix (prefix: fewer forward passes, faster); the fit records it "
        "and the agent scores that way",
    )


def _cmd_list(_args: argparse.Namespace) -> int:
    from agent.skills import SkillRegistry

    registry = SkillRegistry()
    for skill in registry.all():
        name = skill.name
        fits = ", ".join(sorted(skill.spec.fits)) or "none"
        print(f"{name} ({skill.origin}): {len(skill.labels)} labels; fitted for: {fits}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from agent.daemon import load_embedder, resolve_model
    from agent.engine.engine import Engine
    from agent.modelbuild.tune_data import load_examples
    from agent.models.errors import ModelError
    from agent.skills import SkillRegistry, builtin_path
    from agent.skills.fitting import fit_skill

    settings = fit_cli.fit_settings(args, device_id="skills-fit")
    if settings is None:
        return fit_cli.EXIT_BAD_INPUT
    registry = SkillRegistry(settings.skills, builtin=settings.builtin_skills)
    skill = registry.get(args.skill)
    if skill is None:
        print(
            f"error: no skill {args.skill!r}; known: {', '.join(registry.names())}", file=sys.stderr
        )
        return fit_cli.EXIT_BAD_INPUT
    target = args.skill_file or (builtin_path(skill.name) if skill.origin == "builtin" else None)
    if target is None and not args.dry_run:
        print("error: give --skill-file for a skill that is not built in", file=sys.stderr)
        return fit_cli.EXIT_BAD_INPUT
    try:
        loaded = load_examples(args.data, registry)
        spec = resolve_model(settings)
    except ModelError as exc:  # TuneDataError (with file:line) is one
        print(f"error: {exc}", file=sys.stderr)
        return fit_cli.EXIT_BAD_INPUT
    # The skill's own lines, and inline-label lines with exactly its labels.
    examples = [
        e
        for e in loaded.examples
        if e.prompt_name == skill.name
        or (e.prompt_name == "inline" and set(e.choices) == set(skill.labels))
    ]
    engine = Engine(spec.path, name=spec.name, provider="cpu", threads=settings.model.threads)
    embedder = None if args.no_embedder else load_embedder(settings)
    try:
        report = fit_skill(engine, skill, examples, embedder, args.scoring)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return fit_cli.EXIT_BAD_INPUT
    fit = report.fit
    print(
        f"{skill.name} on {spec.name}"
        + (f" + {fit.embedder}" if fit.combined else " (SLM alone)")
        + f": {report.used} examples ({report.skipped_exemplars} exemplars and "
        f"{report.skipped_unknown} unknown labels left out), {report.seconds:.0f} s\n"
        f"  accuracy {report.accuracy_before:.3f} -> {report.accuracy_after:.3f}\n"
        f"  expected calibration error (5-fold cross-validated): "
        f"{fit.ece_before:.3f} -> {fit.ece_after:.3f}\n"
        + (
            "  embedding stage: off for this model (mixed with it, the answers to these "
            "examples are all right or all wrong, so no calibrator could learn which to doubt)\n"
            if fit.embedder and fit.combined is None
            else ""
        )
        + (
            f"  cascade: the embedding stage answers alone at confidence >= {fit.accept:.3f}"
            if fit.accept is not None
            else "  cascade: off"
            + (" (the embedding stage alone loses too much accuracy)" if fit.combined else "")
        )
    )
    return fit_cli.finish_fit(spec.name, fit, target=target, dry_run=args.dry_run)
