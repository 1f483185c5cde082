"""`protadapt` command line: parse → RunConfig → one library call. Errors print as one line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from protadapt.rundir import RunInterrupted


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may follow options (`--out DIR optim.lr=1e-4`); argparse stops at the first
        if not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(message)s")
    _quiet_libraries()
    try:
        return int(args.handler(args) or 0)
    except (KeyboardInterrupt, RunInterrupted):
        hints = {"fit": " (resume with --resume)", "cv": " (resume with --resume)", "compare": " (run it again to continue)"}
        print(f"protadapt: interrupted{hints.get(args.command, '')}", file=sys.stderr)
        return 130
    except Exception as error:  # every user-facing error is one line; PROTADAPT_DEBUG=1 shows the traceback
        if os.environ.get("PROTADAPT_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"protadapt: error: {message}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    from protadapt.embeddings.cli import add_embed_command

    parser = argparse.ArgumentParser(prog="protadapt", description="Adapt ESM protein language models to small prediction tasks.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    fit = commands.add_parser("fit", help="train one model; writes a run directory")
    _add_run_options(fit)
    fit.add_argument("--out", help="run directory (default: runs/TASK-METHOD-seedN)")
    _add_existing_options(fit, "continue an interrupted fit from its last finished epoch")
    fit.set_defaults(handler=_fit)

    cv = commands.add_parser("cv", help="k-fold cross-validation on the task's training split")
    _add_run_options(cv)
    cv.add_argument("--folds", type=int, help="number of folds (default 5)")
    cv.add_argument("--repeats", type=int, help="repeats of the whole k-fold cut, each with new seeds (default 1)")
    cv.add_argument("--out", help="output directory (default: runs/cv-TASK-METHOD-seedN)")
    _add_existing_options(cv, "continue an interrupted cv: finished folds are kept, the others resumed")
    cv.set_defaults(handler=_cv)

    _add_predict(commands)

    methods = commands.add_parser("methods", help="every method and its trainable-parameter count")
    methods.add_argument("--backbone", help="architecture to count for (default: the run default, esm2_t6_8M_UR50D)")
    methods.add_argument("--rank", type=int, help="r (default: adapter.rank's default, 8)")
    methods.add_argument("--include-ffn", action="store_true")
    methods.set_defaults(handler=_methods)

    _add_data(commands)
    doctor = commands.add_parser("doctor", help="versions, devices, where weights and data are looked for")
    doctor.set_defaults(handler=_doctor)

    _add_compare(commands)
    analyze = commands.add_parser("analyze", help="ΔM–ΔD weight-decomposition analysis of trained runs")
    analyze.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or folders holding them")
    analyze.add_argument("--out", default="analysis", help="directory for the CSVs and the figure")
    analyze.set_defaults(handler=_analyze)
    _add_serve(commands)
    _add_export(commands)
    add_embed_command(commands)
    return parser


def _add_predict(commands) -> None:
    predict = commands.add_parser("predict", help="predict a FASTA/CSV file with a trained run, a cv output or an ensemble")
    predict.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                         help="run directories or cv outputs (several: their mean and spread); the last argument is INPUT")
    predict.add_argument("input", help="FASTA, CSV or TSV of sequences")
    predict.add_argument("--alpha", type=float, help="conformal level of the sets/intervals (default: the run's, 0.1)")
    predict.add_argument("-o", "--output", help="CSV to write (default: INPUT_STEM.predictions.csv here)")
    predict.add_argument("--truncate", action="store_true", help="truncate over-long sequences instead of failing")
    _add_inference_options(predict)
    predict.add_argument("--quiet", action="store_true")
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser("evaluate", help="metrics of a trained run on a labelled file")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("input", help="labelled FASTA, CSV or TSV")
    evaluate.add_argument("-o", "--output", help="also write the metrics as JSON here")
    _add_inference_options(evaluate)
    evaluate.set_defaults(handler=_evaluate)


def _add_data(commands) -> None:
    data = commands.add_parser("data", help="list the bundled tasks or describe one")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    data_commands.add_parser("list", help="the registered tasks").set_defaults(handler=_data_list)
    info = data_commands.add_parser("info", help="counts, class balance and lengths of a task")
    info.add_argument("task")
    info.set_defaults(handler=_data_info)


def _add_compare(commands) -> None:
    compare = commands.add_parser("compare", help="methods × tasks × seeds with baselines and paired statistics")
    compare.add_argument("--tasks", default="bbb,thermostability,mic", help="comma-separated tasks")
    compare.add_argument("--methods", default="full,lora,dora,bidora",
                         help="comma-separated entries METHOD[:KEY=VALUE...], or the alias bidora_fo")
    compare.add_argument("--seeds", default="0-4", help="a range (0-4) or list (0,1,2)")
    compare.add_argument("--backbone", help="fair-esm name, .pt file, HF directory, or tiny")
    compare.add_argument("--random-init", action="store_true", default=None, help="random weights (offline work)")
    compare.add_argument("--cv", type=int, help="K folds of each training split per seed (default: the task's test split)")
    compare.add_argument("--max-train", help="fixed training subsample per task, e.g. thermostability=400,mic=800")
    compare.add_argument("--reference", default="bidora", help="method the paired tests compare against")
    compare.add_argument("--config", help="YAML file of settings for every cell")
    compare.add_argument("--out", default="runs/compare", help="output directory (cells/, comparison.csv, .md)")
    compare.add_argument("--quiet", action="store_true", default=None)
    compare.add_argument("--progress", action="store_true", default=None, help="progress bars even when not on a terminal")
    compare.add_argument("--overwrite", action="store_true", help="clear OUT first (by default finished cells are reused)")
    compare.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every cell")
    compare.set_defaults(handler=_compare)


def _add_serve(commands) -> None:
    serve = commands.add_parser("serve", help="a REST API and web page for a trained run (pip install 'protadapt[serve]')")
    serve.add_argument("run_dir")
    serve.add_argument("--host", help="interface to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, help="default: 8000")
    serve.add_argument("--max-sequences", type=int, help="sequences per request (more: HTTP 413)")
    serve.add_argument("--max-bytes", type=int, help="request body size (more: HTTP 413)")
    _add_inference_options(serve)
    serve.set_defaults(handler=_serve)


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="a trained run as a PEFT adapter, a merged HF model (+ its head) or ONNX")
    export.add_argument("run_dir")
    export.add_argument("--format", required=True, choices=["peft", "merged", "onnx"], help="what to write")
    export.add_argument("-o", "--out", required=True, help="output directory (must not exist, or be empty)")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    export.set_defaults(handler=_export)


def _add_existing_options(parser: argparse.ArgumentParser, resume_help: str) -> None:
    """An existing output directory is refused unless the user resumes or overwrites it."""
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help=resume_help)
    existing.add_argument("--overwrite", action="store_true", help="delete what the output directory holds first")


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, help="sequences per batch (default 32)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, …")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "fp16"],
                        help="autocast dtype for the forward (bf16/fp16: faster on recent GPUs)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", help="bbb, thermostability, mic, or custom (with data.train_file=PATH)")
    parser.add_argument("--method", help="bidora, dora, lora, wegeft, prompt, full or head")
    parser.add_argument("--backbone", help="fair-esm name, .pt file, HF directory, or tiny")
    parser.add_argument("--random-init", action="store_true", default=None,
                        help="the backbone's architecture with random weights (offline work, tests)")
    parser.add_argument("--config", help="YAML file of settings (see configs/)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--quiet", action="store_true", default=None, help="no progress bars or info logs")
    parser.add_argument("--progress", action="store_true", default=None,
                        help="progress bars even when stderr is not a terminal (default there: a line per epoch)")
    trainer = parser.add_argument_group("scaling out (passed to the Lightning Trainer)")
    trainer.add_argument("--accelerator", help="cpu, gpu, mps or auto")
    trainer.add_argument("--devices", help="number of devices, or a list such as 0,1")
    trainer.add_argument("--strategy", help="auto, ddp, ddp_spawn, fsdp (sharded: README, Beyond one GPU), ...")
    trainer.add_argument("--num-nodes", type=int)
    trainer.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="any config key, e.g. optim.lr=1e-4 adapter.rank=4 data.batch_size=8")


def run_config(args: argparse.Namespace):
    """Defaults ← --config YAML ← flags ← KEY=VALUE overrides."""
    from protadapt.config import load_config

    flags = {"data.task": args.task, "adapter.method": args.method, "backbone": args.backbone,
             "random_init": args.random_init, "seed": args.seed, "quiet": args.quiet, "progress": args.progress,
             "trainer.accelerator": args.accelerator, "trainer.devices": args.devices,
             "trainer.strategy": args.strategy, "trainer.num_nodes": args.num_nodes,
             "trainer.precision": args.precision}
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(args.config, overrides + list(args.overrides))


def _fit(args: argparse.Namespace) -> int:
    from protadapt.training.run import fit

    config = run_config(args)
    result = fit(config, args.out, resume=args.resume, overwrite=args.overwrite)
    if result.is_global_zero:  # under DDP the other ranks trained too, but report nothing
        print(json.dumps({"run_dir": str(result.run_dir), **result.metrics}, indent=2))
    return 0


def _cv(args: argparse.Namespace) -> int:
    from protadapt.training.cv import Folds, cross_validate

    config = run_config(args)
    folds = Folds(**{k: v for k, v in {"folds": args.folds, "repeats": args.repeats}.items() if v is not None})
    table = cross_validate(config, folds, args.out, resume=args.resume, overwrite=args.overwrite)
    if not table.empty:  # empty on DDP ranks other than 0
        print(table.to_string(index=False))
    return 0


def _compare(args: argparse.Namespace) -> int:
    import time

    from protadapt.compare import Grid, parse_max_train, parse_seeds, run_comparison
    from protadapt.config import load_config
    from protadapt.files import write_text_atomic
    from protadapt.report import comparison_markdown

    started = time.perf_counter()
    flags = {"backbone": args.backbone, "random_init": args.random_init, "quiet": args.quiet, "progress": args.progress}
    base = load_config(args.config, [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides))
    grid = Grid(tasks=args.tasks.split(","), methods=args.methods.split(","), seeds=parse_seeds(args.seeds),
                cv=args.cv, max_train=parse_max_train(args.max_train))
    table = run_comparison(base, grid, args.out, overwrite=args.overwrite)
    options = {"--tasks": args.tasks, "--methods": args.methods, "--seeds": args.seeds, "--backbone": args.backbone,
               "--cv": args.cv, "--max-train": args.max_train, "--reference": args.reference, "--config": args.config,
               "--out": args.out}
    command = " ".join(["protadapt compare", *(f"{k} {v}" for k, v in options.items() if v is not None),
                        *(["--random-init"] if args.random_init else []), *args.overrides])
    report = comparison_markdown(table, reference=args.reference, command=command,
                                 wall_time_s=time.perf_counter() - started,
                                 identity_below=base.uncertainty.min_identity)
    write_text_atomic(report, Path(args.out) / "comparison.md")
    print(report)
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from protadapt.analyze import analyse_runs

    correlations = analyse_runs(args.run_dirs, args.out)
    print(correlations.to_string(index=False))
    print(f"wrote {args.out}/delta_m_delta_d.csv, correlations.csv and delta_m_delta_d.png")
    return 0


def _export(args: argparse.Namespace) -> int:
    from protadapt.export import export_run

    out = export_run(args.run_dir, args.out, args.format, overwrite=args.overwrite)
    print(f"wrote {args.format} export of {args.run_dir} to {out} (see {out}/README.md)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from protadapt.data.for_run import read_for_run
    from protadapt.ensemble import find_run_dirs
    from protadapt.files import write_csv_atomic
    from protadapt.inference import pick_device
    from protadapt.model import ProteinPredictor
    from protadapt.uncertainty import predict_runs

    output = output_path(args.output, args.input, ".predictions.csv",
                         tuple(file for run in args.run_dirs for file in run_files(run)))
    device = pick_device(args.device)
    runs = find_run_dirs(args.run_dirs)
    predictor, metadata = ProteinPredictor.load(runs[0])
    frame = read_for_run(args.input, runs[0], metadata, require_labels=False, truncate=args.truncate,
                         max_length=predictor.backbone.max_residues)
    source = Path(args.run_dirs[0]) if len(args.run_dirs) == 1 else None  # its conformal.json, if any
    table = predict_runs(runs, source, frame, predictor.to(device), device=device, alpha=args.alpha,
                         **_batch_size(args), progress=not args.quiet, precision=args.precision)
    write_csv_atomic(table, output)
    print(f"wrote {len(frame)} predictions to {output}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from protadapt.data.for_run import read_for_run, undefined_as_null
    from protadapt.files import write_text_atomic
    from protadapt.inference import evaluate_frame, pick_device, predict_scores
    from protadapt.model import ProteinPredictor
    from protadapt.uncertainty import scaled_scores

    output = output_path(args.output, args.input, ".metrics.json", run_files(args.run_dir)) if args.output else None
    device = pick_device(args.device)
    predictor, metadata = ProteinPredictor.load(args.run_dir)
    frame = read_for_run(args.input, args.run_dir, metadata, require_labels=True, min_class_count=1,
                         max_length=predictor.backbone.max_residues)
    predictor.to(device)
    scores = scaled_scores(args.run_dir, predict_scores(predictor, frame, **_batch_size(args), precision=args.precision))
    metrics = evaluate_frame(predictor, frame, scores=scores)
    text = json.dumps(undefined_as_null(metrics, frame), indent=2)
    if output:
        write_text_atomic(text + "\n", output)
    print(text)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from protadapt.serve import ServeSettings, serve

    options = {"host": args.host, "port": args.port, "max_sequences": args.max_sequences,
               "max_bytes": args.max_bytes, "device": args.device, "precision": args.precision}
    serve(args.run_dir, ServeSettings(**{key: value for key, value in options.items() if value is not None}))
    return 0


def _methods(args: argparse.Namespace) -> int:
    from protadapt.adapters import AdapterConfig, expected_trainable, get_method, method_names
    from protadapt.backbones import resolve_architecture
    from protadapt.config import RunConfig, method_defaults

    backbone = args.backbone or RunConfig.backbone
    rank = AdapterConfig.rank if args.rank is None else args.rank
    architecture = resolve_architecture(backbone)
    print(f"{'method':<8} {'trainable backbone params':>26}   ({architecture.name}, rank {rank}"
          f"{', attention + FFN' if args.include_ffn else ', attention q/k/v/out'}; the head adds its own)"
          "   default optim.lr")
    for name in method_names():
        config = AdapterConfig(method=name, rank=rank, include_ffn=args.include_ffn)
        lr = "– (own fit)" if get_method(name).fit else f"{method_defaults(name).lr:g}"
        print(f"{name:<8} {expected_trainable(architecture, config):>26,}   {lr}")
    return 0


def output_path(output: str | None, input_file: str, suffix: str, protected: tuple) -> Path:
    from protadapt.outputs import output_path as checked

    return checked(output, input_file, suffix, protected)


def run_files(run_dir: str) -> tuple:
    """A run's own files may not be outputs either."""
    return tuple(Path(run_dir).iterdir()) if Path(run_dir).is_dir() else ()


def _batch_size(args: argparse.Namespace) -> dict:
    """`--batch-size` when given; otherwise the inference functions' own default."""
    return {} if args.batch_size is None else {"batch_size": args.batch_size}


def _data_list(args: argparse.Namespace) -> int:
    from protadapt.data.tasks import format_task_list

    print(format_task_list())
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from protadapt.data.tasks import format_task_info

    print(format_task_info(args.task))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from protadapt.doctor import report

    print(report())
    return 0


def _quiet_libraries() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
