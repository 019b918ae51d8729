"""The `distill` command.

    distill stage prepare|teacher|distill|evaluate|gate [--params params.yaml] [--model NAME]
    distill run [--config params.yaml]      run every stage in order, skipping finished ones; print a summary
    distill report [--config params.yaml]   the metrics table and plots of the last run
    distill plan --teacher N --student M    suggest the chain (bridges) from the capacity gap
    distill validate [--config params.yaml] check a params file without running or downloading anything

Exit codes: 0 ok, 2 bad parameters or data, 3 a promotion gate failed, 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from distill.config import ParamsError, PipelineParams, load_params

EXIT_BAD_INPUT, EXIT_GATE = 2, 3


def _params(args) -> PipelineParams:
    return load_params(getattr(args, "params", None) or getattr(args, "config", None) or "params.yaml")


def cmd_stage(args) -> int:
    from distill import launch, stages

    params = _params(args)
    name = args.name
    if name in ("distill", "evaluate") and not args.model:
        raise ParamsError(f"distill stage {name}: --model NAME is required")
    nproc = {"teacher": params.teacher_training.nproc_per_node,
             "distill": params.hop(args.model).nproc_per_node if name == "distill" else 1}.get(name, 1)
    if nproc > 1 and not launch.is_worker():
        return launch.launch(["stage", name, "--params", args.params, *(["--model", args.model] if args.model else [])],
                             nproc)
    if name == "prepare":
        result = stages.prepare(params)
    elif name == "teacher":
        result = stages.teacher(params)
    elif name == "distill":
        result = stages.distill(params, args.model)
    elif name == "evaluate":
        result = stages.evaluate(params, args.model)
    else:
        result = stages.gate(params)
    print(_short(result))
    return 0


def _short(result: dict) -> str:
    keep = {k: v for k, v in result.items() if not isinstance(v, dict | list)}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items())


def plan_steps(params: PipelineParams) -> list[tuple[str, str | None, Path]]:
    """(stage, model, the output that marks it finished), in pipeline order."""
    steps: list[tuple[str, str | None, Path]] = [("prepare", None, params.path("metrics", "prepare.json")),
                                                   ("teacher", None, params.path("models", "teacher"))]
    steps += [("distill", hop.student, params.path("models", hop.student)) for hop in params.chain]
    steps += [("evaluate", name, params.path("eval", f"{name}.json")) for name in params.model_order]
    return steps


def cmd_run(args) -> int:
    """Run the pipeline in this process. Finished stages (their output present) are skipped unless --force."""
    from tqdm.auto import tqdm

    from distill import stages

    params = _params(args)
    steps = plan_steps(params)
    bar = tqdm(steps, desc="pipeline", unit="stage")
    for stage, model, marker in bar:
        bar.set_postfix_str(f"{stage} {model or ''}".strip())
        if marker.exists() and not args.force:
            continue
        start = time.perf_counter()
        if stage == "prepare":
            stages.prepare(params)
        elif stage == "teacher":
            stages.teacher(params)
        elif stage == "distill":
            stages.distill(params, model)
        else:
            stages.evaluate(params, model)
        tqdm.write(f"{stage:9s} {model or '':10s} {time.perf_counter() - start:7.1f}s")
    try:
        stages.gate(params)
        verdict = "all gates passed"
    except stages.GateFailed as failure:
        verdict = str(failure)
    print(summary_table(params))
    print(verdict)
    return 0 if verdict == "all gates passed" else EXIT_GATE


def summary_table(params: PipelineParams) -> str:
    from distill import stages

    rows = [("model", "accuracy", "perplexity", "params", "size MB", "tokens/s", "KL to teacher")]
    for name, r in stages.summary(params).items():
        kl = r.get("teacher_kl")
        rows.append((name, f"{r['exact_match']:.3f}", f"{r['perplexity']:.3f}", f"{r['num_parameters']:,}",
                     f"{(r.get('size_on_disk_bytes') or 0) / 1e6:.2f}", f"{r['tokens_per_second']:.0f}",
                     "-" if kl is None else f"{kl:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def cmd_report(args) -> int:
    params = _params(args)
    print(summary_table(params))
    gate = params.path("report", "gate.json")
    if gate.exists():
        print(f"gates: {gate.read_text().strip()[:2000]}")
    plot = params.path("report", "accuracy_by_length.png")
    print(f"plot: {plot}" if plot.exists() else "no plot yet (run the gate stage)")
    return 0


def cmd_plan(args) -> int:
    from distill.planner import param_count_from_config, plan_chain

    def size(value: str) -> int:
        return int(float(value)) if value.replace(".", "", 1).replace("e", "", 1).isdigit() else \
            param_count_from_config(value)

    plan = plan_chain(size(args.teacher), size(args.student), max_ratio=args.max_ratio,
                      candidates=[size(c) for c in args.candidates] if args.candidates else None)
    print(plan.explain())
    return 0


def cmd_validate(args) -> int:
    params = _params(args)
    print(f"ok: {len(params.models)} models, {len(params.chain)} hop(s): "
          + " -> ".join(params.model_order))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Distil a large language model into a small one.")
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="run one pipeline stage (what dvc.yaml calls)")
    stage.add_argument("name", choices=["prepare", "teacher", "distill", "evaluate", "gate"])
    stage.add_argument("--params", default="params.yaml")
    stage.add_argument("--model", help="the model a distill/evaluate stage is about")
    stage.set_defaults(func=cmd_stage)
    run = sub.add_parser("run", help="run the whole pipeline here, with progress and a summary")
    run.add_argument("--config", default="params.yaml")
    run.add_argument("--force", action="store_true", help="rerun finished stages too")
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="show the metrics and plots of the last run")
    report.add_argument("--config", default="params.yaml")
    report.set_defaults(func=cmd_report)
    plan = sub.add_parser("plan", help="suggest bridges between a teacher and a student by the capacity gap")
    plan.add_argument("--teacher", required=True, help="parameter count (7e9) or a model config (hub id or path)")
    plan.add_argument("--student", required=True)
    plan.add_argument("--max-ratio", type=float, default=2.5)
    plan.add_argument("--candidates", nargs="*", help="available sizes or configs to snap bridges to")
    plan.set_defaults(func=cmd_plan)
    validate = sub.add_parser("validate", help="validate a params file")
    validate.add_argument("--config", default="params.yaml")
    validate.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ParamsError as error:
        print(f"distill: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as error:
        if type(error).__name__ == "DataValidationError":
            print(f"distill: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise
    except RuntimeError as error:
        if type(error).__name__ == "GateFailed":
            print(f"distill: {error}", file=sys.stderr)
            return EXIT_GATE
        raise


if __name__ == "__main__":
    sys.exit(main())
