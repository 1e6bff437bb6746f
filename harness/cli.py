"""The ``harness`` command. Heavy libraries are imported only by the commands that need them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from harness import __version__
from harness.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line and exit status 2 like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"harness: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="harness",
        description="Train, run and compare small text models on identical data: one table of quality, "
        "training cost, serving speed and memory.",
    )
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    cmp = commands.add_parser("compare", help="train, predict and score approaches on one spec, then print the table")
    cmp.add_argument(
        "--plugins", required=True, help="approaches to compare, by name (see `harness plugins`): bert,qwen"
    )
    cmp.add_argument("--spec", required=True, help="a spec name (see `harness specs`) or a YAML file")
    cmp.add_argument(
        "--data",
        help="local files instead of the spec's dataset: train=PATH,test=PATH[,validation=PATH] (JSONL or CSV)",
    )
    cmp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PLUGIN.KEY=VALUE",
        help="override one setting, e.g. bert.num_train_epochs=1 (repeatable)",
    )
    cmp.add_argument(
        "--seeds",
        help="train and measure each approach once per seed, e.g. 0,1,2: the table shows "
        "mean ± sd across them (default: the spec's seeds, else its seed)",
    )
    cmp.add_argument(
        "--teacher",
        help="an approach that labels the train examples first (e.g. openai at an endpoint); "
        "the students train on its labels, cached in the store",
    )
    cmp.add_argument("--limit-train", type=int, help="a stratified sample of N training examples")
    cmp.add_argument("--limit-test", type=int, help="a stratified sample of N test examples")
    cmp.add_argument(
        "--random-weights",
        action="store_true",
        help="build models from their architecture config without weights: speed is real, quality is not",
    )
    cmp.add_argument(
        "--rerun",
        action="store_true",
        help="train and measure again even if the store has a run with the same identity",
    )
    cmp.add_argument(
        "--launcher",
        choices=("process", "inline"),
        default="process",
        help="process (default): train and measure each approach in processes of their own; "
        "inline: in this process, for debugging a plugin",
    )
    cmp.add_argument("--latency-samples", type=int, default=100, help="requests timed one at a time (default 100)")
    cmp.add_argument("--json", type=Path, help="also write the comparison as JSON to this file")
    cmp.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")

    grd = commands.add_parser("grid", help="approaches x settings x seeds x specs as runs, locally or on a Ray cluster")
    grd.add_argument(
        "--spec", dest="specs", action="append", required=True, help="a spec (repeatable: one comparison each)"
    )
    grd.add_argument("--plugins", required=True, help="approaches, by name: bert,qwen")
    grd.add_argument("--seeds", default="0", help="seeds, e.g. 0,1,2 (default 0)")
    grd.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PLUGIN.KEY=VALUE[,VALUE...]",
        help="a setting, or several values for it: one row per value (bert.learning_rate=1e-5,2e-5)",
    )
    grd.add_argument(
        "--data", help="local files instead of each spec's dataset: train=PATH,test=PATH[,validation=PATH]"
    )
    grd.add_argument("--limit-train", type=int, help="a stratified sample of N training examples")
    grd.add_argument("--limit-test", type=int, help="a stratified sample of N test examples")
    grd.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local (default): runs one after another, a process per unit; ray: each unit a Ray task",
    )
    grd.add_argument(
        "--address",
        help="the Ray cluster to join (auto: the one this machine is part of); default: a local Ray with --cpus CPUs",
    )
    grd.add_argument("--cpus", type=int, help="a local Ray's CPUs (default: this machine's)")
    grd.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each unit asks Ray for (default 1)")
    grd.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each unit asks Ray for (default 0)")
    grd.add_argument("--parallel", type=int, help="runs at once on Ray (default: as many as the grid has)")
    grd.add_argument("--random-weights", action="store_true", help="models from their configs: speed only")
    grd.add_argument("--latency-samples", type=int, default=100, help="requests timed one at a time (default 100)")
    grd.add_argument("--json", type=Path, help="also write the comparisons as JSON to this file")
    grd.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")

    bch = commands.add_parser(
        "bench", help="serving speed of one approach: batch sizes, latency, requests/s under load"
    )
    bch.add_argument("--plugin", required=True, help="the approach to measure")
    bch.add_argument("--spec", required=True, help="a spec name or YAML file (its test split is the request sample)")
    source = bch.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a stored run id (from compare --json or report) whose trained model to serve")
    source.add_argument("--random-weights", action="store_true", help="an untrained model built from its config")
    bch.add_argument("--data", help="local files instead of the spec's dataset: train=PATH,test=PATH")
    bch.add_argument("--set", dest="overrides", action="append", default=[], metavar="PLUGIN.KEY=VALUE")
    bch.add_argument("--limit-test", type=int, default=256, help="requests sampled from the test split (default 256)")
    bch.add_argument("--batch-sizes", default="1,8,32", help="throughput batch sizes (default 1,8,32)")
    bch.add_argument("--rounds", type=int, default=3, help="timed rounds per batch size; the median is reported")
    bch.add_argument("--latency-samples", type=int, default=50, help="requests timed one at a time (default 50)")
    bch.add_argument("--concurrency", type=int, default=8, help="clients sending requests at once (default 8)")
    bch.add_argument("--requests", type=int, default=200, help="requests sent under load (default 200)")
    bch.add_argument(
        "--max-batch",
        type=int,
        help="the served batch limit (default: --concurrency, the most that "
        "closed-loop clients can fill); each served round follows an offline pass at it",
    )
    bch.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long the oldest waiting request may wait for its batch to fill (default 5)",
    )
    bch.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    bch.add_argument("--store", type=Path, help="results store directory (for --run)")

    rep = commands.add_parser("report", help="re-render a stored comparison (the newest by default)")
    rep.add_argument("comparison_id", nargs="?", help="a comparison id from an earlier compare")
    rep.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN_OR_COMPARISON",
        help="one table from stored runs and comparisons of the same spec and test set (made on other "
        "days, machines or seeds), with the same statistics",
    )
    rep.add_argument(
        "--html",
        type=Path,
        metavar="PATH",
        help="also write one self-contained HTML page: the table, "
        "the statistics, per-class or per-field metrics, plots, settings, hashes and the worst mistakes",
    )
    rep.add_argument("--json", type=Path, help="write the comparison as JSON to this file")
    rep.add_argument("--store", type=Path, help="results store directory")

    sto = commands.add_parser("store", help="look after the results store")
    store_commands = sto.add_subparsers(dest="store_command", required=True, metavar="ACTION", parser_class=_Parser)
    chk = store_commands.add_parser(
        "check",
        help="make the index agree with the run directories: rebuild a corrupt "
        "index, index lost runs, drop runs whose directory or record is gone",
    )
    chk.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")
    chk.add_argument(
        "--remove-partials",
        action="store_true",
        help="also remove runs a killed process left .partial (kept by default: the next compare "
        "with the same training resumes them)",
    )
    gc = store_commands.add_parser("gc", help="remove abandoned work: runs killed and never resumed, data caches")
    gc.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")
    gc.add_argument("--older-than", type=float, metavar="DAYS", help="only what has not changed for DAYS days")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed and the space it frees")
    ls = store_commands.add_parser("ls", help="list stored runs and killed runs that can resume, with their size")
    ls.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")
    ls.add_argument("--json", action="store_true", help="print JSON")

    tr = commands.add_parser(
        "try",
        help="every approach of a stored comparison answering your text, side by side "
        "(a local web page, or --text in the terminal)",
    )
    tr.add_argument("--spec", required=True, help="a spec name or YAML file")
    tr.add_argument("--comparison", help="a stored comparison of the spec (default: its newest)")
    tr.add_argument("--text", help="answer this text in the terminal instead of serving the page")
    tr.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PLUGIN.KEY=VALUE",
        help="predict settings, e.g. qwen.device=cpu",
    )
    tr.add_argument("--host", default="127.0.0.1", help="the page's address (default 127.0.0.1: this machine only)")
    tr.add_argument("--port", type=int, default=7860)
    tr.add_argument("--share", action="store_true", help="also ask Gradio for a public share link (off by default)")
    tr.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")

    plg = commands.add_parser("plugins", help="list the installed approaches and plugins")
    plg.add_argument("--json", action="store_true", help="print JSON")

    spc = commands.add_parser("specs", help="list the specs found in ./specs and shipped with harness")
    spc.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {
            "compare": cmd_compare,
            "bench": cmd_bench,
            "report": cmd_report,
            "store": cmd_store,
            "plugins": cmd_plugins,
            "specs": cmd_specs,
            "try": cmd_try,
            "grid": cmd_grid,
        }[args.command](args)
    except UserError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2


def cmd_grid(args: argparse.Namespace) -> int:
    import time

    from harness.data_load import load_datasets, parse_data_option
    from harness.files import write_json
    from harness.grid import grid_plans
    from harness.plugins import load_plugins
    from harness.report_terminal import TerminalReporter
    from harness.runner import CompareOptions, compare
    from harness.spec import load_spec
    from harness.store import Store
    from harness.store.records import comparison_to_dict

    plugins = load_plugins()
    approaches = [name.strip() for name in args.plugins.split(",") if name.strip()]
    if not approaches or len(set(approaches)) != len(approaches):
        raise UserError(f"expected distinct plugin names separated by commas, got {args.plugins!r}", where="--plugins")
    _positive(args.latency_samples, "--latency-samples")
    if args.parallel is not None:
        _positive(args.parallel, "--parallel")
    if args.cpus is not None:
        _positive(args.cpus, "--cpus")
    # A unit always runs on some CPU; Ray would refuse a negative or infinite amount only once units start.
    if not 0 < args.cpus_per_run < float("inf"):
        raise UserError(f"must be a number above 0, got {args.cpus_per_run:g}", where="--cpus-per-run")
    if not 0 <= args.gpus_per_run < float("inf"):
        raise UserError(f"must be a number of 0 or more, got {args.gpus_per_run:g}", where="--gpus-per-run")
    seeds = parse_seeds(args.seeds)
    specs = [load_spec(name) for name in args.specs]
    for spec in specs:  # every row of each spec file checked, as compare does; grid_plans checks each --set combination
        for notice in plugins.check_spec(spec, approaches, {}):
            print(f"harness: notice: {notice}", file=sys.stderr)
    grids = [(spec, grid_plans(plugins, spec, approaches, args.overrides)) for spec in specs]
    datas = [
        load_datasets(
            spec,
            data=parse_data_option(args.data) if args.data else None,
            limit_train=args.limit_train,
            limit_test=args.limit_test,
        )
        for spec in specs
    ]
    check_output_target(args.json)
    Store(args.store).check_writable()
    units = sum(len(plans) for _, plans in grids) * len(seeds)
    launcher = "process"
    if args.executor == "ray":  # a cluster that does not answer is one line, before the store is touched
        from harness import ray_executor

        ray_executor.start(args.address, args.cpus)
        ray_executor.RESOURCES.update(cpus=args.cpus_per_run, gpus=args.gpus_per_run)
        launcher = "ray"
    store = Store(args.store)
    console = _console()
    plugins.pm.register(TerminalReporter(console, []), name="terminal-reporter")
    comparisons = []
    start = time.perf_counter()
    for (spec, plans), data in zip(grids, datas):
        options = CompareOptions(
            random_weights=args.random_weights,
            latency_samples=args.latency_samples,
            launcher=launcher,
            seeds=seeds,
            parallel=(args.parallel or units) if launcher == "ray" else 1,
        )
        comparisons.append(compare(plugins, spec, data, plans, store, options, console))
    seconds = time.perf_counter() - start
    console.print(
        f"grid: {units} runs ({', '.join(c.comparison_id for c in comparisons)}) in {seconds:.1f} s, {args.executor}"
    )
    if args.json is not None:
        write_json(
            args.json,
            {
                "seconds": seconds,
                "executor": args.executor,
                "comparisons": [comparison_to_dict(c) for c in comparisons],
            },
        )
    return 1 if any(run.status == "failed" for c in comparisons for run in c.runs) else 0


def cmd_try(args: argparse.Namespace) -> int:
    from harness.data_rows import is_blank
    from harness.plugins import load_plugins
    from harness.settings import parse_overrides
    from harness.spec import load_spec
    from harness.store import Store
    from harness.tryout import answer_all, gradio_module, load_rows, page, terminal_table

    if args.text is not None and is_blank(args.text):
        raise UserError("is blank: give a text to answer", where="--text")
    if not 1 <= args.port <= 65535:
        raise UserError(f"must be a TCP port from 1 to 65535, got {args.port}", where="--port")
    plugins = load_plugins()
    spec = load_spec(args.spec)
    if args.text is None:
        gradio_module()  # the extra's one line before minutes of loading models
    comparison_id, rows = load_rows(plugins, spec, Store(args.store), args.comparison, parse_overrides(args.overrides))
    console = _console()
    if args.text is not None:
        console.print(terminal_table(answer_all(plugins, rows, args.text), args.text))
        return 0
    demo = page(plugins, rows, spec, comparison_id)
    console.print(f"harness try: {', '.join(row.name for row in rows)} of comparison {comparison_id}")
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, inbrowser=False, show_error=True, quiet=False
    )
    return 0


def _console():
    from rich.console import Console

    # Piped or captured output gets room for the whole table instead of rich's 80-column default.
    return Console(width=None if sys.stdout.isatty() else 180)


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.data_load import data_checks, data_warnings, load_datasets, parse_data_option
    from harness.files import write_json
    from harness.plugins import load_plugins
    from harness.report_terminal import TerminalReporter
    from harness.runner import CompareOptions, compare, plan_settings
    from harness.settings import parse_overrides
    from harness.spec import load_spec
    from harness.store import Store
    from harness.store.records import comparison_to_dict

    # Everything the user typed is checked before anything is trained or written.
    plugins = load_plugins()
    approaches = [name.strip() for name in args.plugins.split(",") if name.strip()]
    if not approaches or len(set(approaches)) != len(approaches):
        raise UserError(f"expected distinct plugin names separated by commas, got {args.plugins!r}", where="--plugins")
    _positive(args.latency_samples, "--latency-samples")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    spec = load_spec(args.spec)
    teacher = args.teacher or spec.teacher
    rows = approaches + ([teacher] if teacher and teacher not in approaches else [])
    for notice in plugins.check_spec(spec, rows, parse_overrides(args.overrides), teacher_option=args.teacher):
        print(f"harness: notice: {notice}", file=sys.stderr)
    plans = plan_settings(plugins, spec, rows, parse_overrides(args.overrides))
    teacher_plan = plans[teacher] if teacher else None
    if teacher_plan is not None:  # a teacher that trains (bert) is one line now, before anything is read or written
        from harness.teacher import check_teacher

        check_teacher(teacher_plan, "--teacher" if args.teacher else f"{spec.where}: teacher")
    plans = {name: plans[name] for name in approaches}
    data = load_datasets(
        spec,
        data=parse_data_option(args.data) if args.data else None,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
    )
    check_output_target(args.json)
    Store(args.store).check_writable()  # before hours of training, not after
    for warning in data_warnings(data_checks(data, spec.to_task())):
        print(f"harness: warning: {warning}", file=sys.stderr)

    console = _console()
    plugins.pm.register(TerminalReporter(console, spec.metrics), name="terminal-reporter")
    options = CompareOptions(
        random_weights=args.random_weights,
        rerun=args.rerun,
        latency_samples=args.latency_samples,
        launcher=args.launcher,
        seeds=seeds,
    )
    store = Store(args.store)
    if teacher_plan is not None:
        from harness.runner import check_approaches
        from harness.teacher import describe, teach

        check_approaches(plugins, spec, plans)  # the students' endpoints and commands too, before the teacher is asked
        data, options.teacher = teach(plugins, spec, data, teacher_plan, store, console)
        console.print(describe(options.teacher))
    comparison = compare(plugins, spec, data, plans, store, options, console)
    from harness.report_plots import write_plots

    write_plots(comparison, store.root / "comparisons" / comparison.comparison_id, store, console)
    if args.json is not None:
        write_json(args.json, comparison_to_dict(comparison))
    return 1 if any(run.status == "failed" for run in comparison.runs) else 0


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"expected distinct integer seeds separated by commas, got {text!r}", where="--seeds")
    from harness.spec import seed_problem

    problem = next((p for p in map(seed_problem, seeds) if p), None)
    if problem:  # numpy would refuse it only once the run has started, as a failed run
        raise UserError(problem, where="--seeds")
    return seeds


def check_output_target(path: Path | None, flag: str = "--json") -> None:
    """``--json PATH`` (or ``--html``) must be a file that can be written, in a directory that exists."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"is a directory; {flag} takes a file path", where=str(path))
    if not path.parent.is_dir():
        raise UserError("directory does not exist", where=str(path))
    if (path.exists() and not os.access(path, os.W_OK)) or not os.access(path.parent, os.W_OK):
        raise UserError("cannot be written (permissions)", where=str(path))


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise UserError(f"must be at least 1, got {value}", where=flag)
    return value


def cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from harness import measure
    from harness.bench import (
        RAW_PROTOCOL,
        BenchResult,
        batch_throughput,
        bench_table,
        latency_rows,
        raw_predict,
        served_requests,
    )
    from harness.data_load import load_datasets, parse_data_option
    from harness.files import write_json
    from harness.plugins import load_plugins
    from harness.progress import SILENT
    from harness.runner import check_approaches, plan_settings, without_answers
    from harness.settings import parse_overrides
    from harness.spec import load_spec
    from harness.store import Store

    try:
        batch_sizes = [_positive(int(b), "--batch-sizes") for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise UserError(
            f"expected sizes separated by commas, got {args.batch_sizes!r}", where="--batch-sizes"
        ) from None
    for flag in ("rounds", "latency_samples", "concurrency", "requests"):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    # A closed loop of N clients never has more than N requests waiting: a larger limit could only add waiting.
    max_batch = args.concurrency if args.max_batch is None else _positive(args.max_batch, "--max-batch")
    check_output_target(args.json)
    plugins = load_plugins()
    spec = load_spec(args.spec)
    overrides = parse_overrides(args.overrides)
    for notice in plugins.check_spec(spec, [args.plugin], overrides):
        print(f"harness: notice: {notice}", file=sys.stderr)
    plan = plan_settings(plugins, spec, [args.plugin], overrides)[args.plugin]
    check_approaches(plugins, spec, {args.plugin: plan})  # as compare does: a missing provider or endpoint is one line
    data = load_datasets(spec, data=parse_data_option(args.data) if args.data else None, limit_test=args.limit_test)
    # As compare does: the row's prompt (an engine's: the served row's); hooks go to the approach the row runs.
    task = spec.to_task(plan.prompt_row or plan.trainer)
    if args.run:
        from harness.serving import load_stored_run

        artifact, settings = load_stored_run(
            plugins, Store(args.store), args.run, plan, task, overrides.get(args.plugin, {})
        )
        source = f"run {args.run}"
    else:
        import tempfile

        from harness.bench import untrained

        # An untrained build keeps nothing on disk that bench needs; a plugin's scratch files go away with it.
        kept = tempfile.TemporaryDirectory(prefix="harness-bench-")  # removed when bench returns
        artifact, settings = untrained(plugins, plan, task, Path(kept.name))
        source = "random weights"

    def predict(examples, call_settings):
        return plugins.configured(plan.approach, call_settings, progress=SILENT).predict(task, artifact, examples)

    examples = without_answers(data.test)
    result = BenchResult(args.plugin, spec.name, source, len(examples))
    served = plugins.configured(plan.approach, settings)
    reference = served.reference(task, artifact) if served.implements("reference") else None
    # Raw and harness take turns, round by round for throughput and request by request for latency, so that
    # a noisy machine moves both alike; each one's peak memory comes from a pass of its own.
    predicts = [predict] if reference is None else [raw_predict(reference), predict]
    result.raw_protocol = None if reference is None else RAW_PROTOCOL
    for b in batch_sizes:
        *raw, harness = batch_throughput(predicts, examples, settings, b, args.rounds)
        result.throughput.append(harness)
        if raw:
            result.raw.setdefault("throughput", []).append(raw[0])
    *raw, result.latency = latency_rows(predicts, examples, settings, args.latency_samples)
    if raw:
        result.raw["latency"] = raw[0]
    result.served = served_requests(
        predict,
        examples,
        settings,
        concurrency=args.concurrency,
        requests=args.requests,
        max_batch=max_batch,
        max_wait_ms=args.max_wait_ms,
        rounds=args.rounds,
    )
    result.environment = measure.environment(artifact.state.get("device") or artifact.device)
    _console().print(bench_table(result))
    if args.json is not None:
        write_json(args.json, asdict(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.files import write_json
    from harness.report_plots import write_plots
    from harness.report_terminal import comparison_table, per_field_table
    from harness.runner import comparison_statistics
    from harness.store import Store
    from harness.store.records import comparison_to_dict

    check_output_target(args.json)
    check_output_target(args.html, "--html")
    store = Store(args.store)
    if args.compare:
        if args.comparison_id:
            raise UserError("give a comparison id or --compare, not both", where="--compare")
        comparison = store.combine(args.compare)
    else:
        comparison = store.load_comparison(args.comparison_id)
    if comparison is None:
        raise UserError(
            f"no comparison {args.comparison_id!r}" if args.comparison_id else "no comparison stored yet",
            where=str(store.root),
        )
    comparison.statistics = comparison_statistics(comparison, store)
    console = _console()
    console.print(comparison_table(comparison))
    fields = per_field_table(comparison)
    if fields is not None:
        console.print(fields)
    plots = write_plots(comparison, store.root / "comparisons" / comparison.comparison_id, store, console)
    if args.html is not None:
        from harness.html import write_html

        write_html(args.html, comparison, store, plots)
        console.print(f"report: {args.html}", highlight=False)
    if args.json is not None:
        write_json(args.json, comparison_to_dict(comparison))
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    import math

    from harness.store import Store
    from harness.store.cleanup import removed_lines, skipped_lines
    from harness.store.layout import size_text

    store = Store(args.store)
    if not (store.root / "runs.db").exists() and not (store.root / "runs").is_dir():
        raise UserError("no results store here (no runs.db, no runs/)", where=str(store.root))
    if args.store_command == "ls":
        rows = store.runs()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        from rich.table import Table

        table = Table("Run", "Approach", "Spec", "Status", "Model", "Size", title=str(store.root), title_justify="left")
        for row in rows:
            table.add_row(
                row["run_id"],
                row["approach"],
                row["spec"],
                row["status"],
                row["model"],
                "-" if row["bytes"] is None else size_text(row["bytes"]),
            )
        _console().print(table)
        return 0
    if args.store_command == "gc":
        days = args.older_than
        if days is not None and (not math.isfinite(days) or days < 0):
            raise UserError(f"expected a number of days, 0 or more, got {days}", where="--older-than")
        if not args.dry_run:
            store.check_writable(open_index=False)
        cleaned = store.cleanup(days, dry_run=args.dry_run)
        found = cleaned.removed
        for path, size, what in found:
            print(f"{'would remove' if args.dry_run else 'removed'} {path} ({what}, {size_text(size)})")
        for line in skipped_lines(cleaned):  # what a running compare holds is never removed
            print(line)
        total = size_text(sum(size for _, size, _ in found))
        print(
            f"{store.root}: {len(found)} to remove, {total} to free (dry run: nothing removed)"
            if args.dry_run
            else f"{store.root}: {len(found)} removed, {total} freed"
        )
        return 0
    store.check_writable(open_index=False)  # check is what repairs a corrupt index
    fixed = store.check()
    skipped: list[str] = []
    if args.remove_partials:  # killed runs only; a running compare's runs are skipped, with a line saying so
        cleaned = store.cleanup(killed_runs_only=True)
        fixed += removed_lines(cleaned)
        skipped = skipped_lines(cleaned)
    for line in fixed + skipped:
        print(line)
    runs, comparisons = (
        store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("runs", "comparisons")
    )
    kept = list(store.stale_partials())  # killed runs, without sizing every run in the store
    print(
        f"{store.root}: {runs} runs and {comparisons} comparisons indexed; "
        + (f"{len(fixed)} fixed" if fixed else "nothing to fix")
        + (f"; {len(kept)} killed runs kept to resume (`harness store gc` removes them)" if kept else "")
    )
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from harness.plugins import load_plugins

    plugins = load_plugins()
    rows: list[dict[str, Any]] = []
    # Every approach, and the plugins that are not (a module that registers approaches is not a row of its own).
    names = {name for name, _ in plugins.pm.list_name_plugin() if not name.endswith(":approaches")}
    for name in sorted(names | set(plugins.registry)):
        meta = plugins.meta.get(name)
        row: dict[str, Any] = {
            "name": name,
            "version": meta.version if meta else "",
            "package": meta.package if meta else "",
            "builtin": bool(meta and meta.builtin),
            "hooks": plugins.hooks_of(name),
        }
        if name in plugins.approaches():
            try:
                row["task_types"] = list(plugins.describe(name).task_types)
            except Exception as exc:  # list the others; say which one is broken
                print(
                    f"harness: plugin {name!r} cannot describe itself: {type(exc).__name__}: {exc}".splitlines()[0],
                    file=sys.stderr,
                )
                row["task_types"] = []
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table("Name", "Version", "Task types", "Hooks", "Package")
    for row in rows:
        table.add_row(
            row["name"],
            row["version"],
            ", ".join(row.get("task_types", [])) or "-",
            ", ".join(h.removeprefix("harness_") for h in row["hooks"]),
            row["package"],
        )
    _console().print(table)
    return 0


def cmd_specs(args: argparse.Namespace) -> int:
    from harness.spec import list_specs, load_spec

    rows = []
    for path in list_specs():
        spec = load_spec(str(path))
        dataset = spec.dataset.hub or (f"{spec.dataset.train}, {spec.dataset.test}" if spec.dataset.train else "--data")
        rows.append(
            {
                "name": spec.name,
                "path": str(path),
                "task": spec.task.type,
                "dataset": dataset,
                "labels": spec.task.labels,
                "fields": spec.task.fields,
                "plugins": sorted(spec.plugins),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    from rich.table import Table

    table = Table("Name", "Task", "Dataset", "Labels / fields", "Plugin settings for")
    for row in rows:
        table.add_row(
            row["name"],
            row["task"],
            row["dataset"],
            ", ".join(row["labels"] or row["fields"]),
            ", ".join(row["plugins"]) or "-",
        )
    _console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
