"""``harness compare`` and ``harness grid``: train, predict and score approaches on one spec, or on a grid."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from harness.commands.checks import check_output_target, checked_storage, parse_seeds, positive, ray_resources
from harness.commands.output import make_console
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.data_load import Datasets
    from harness.estimate import CostPlan
    from harness.planning import CompareOptions, Plan
    from harness.plugins import Plugins
    from harness.spec import Spec
    from harness.store import Store


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.comparison import compare
    from harness.data_load import data_checks, data_warnings
    from harness.files import write_json
    from harness.planning import CompareOptions, plan_settings
    from harness.report_terminal import TerminalReporter
    from harness.settings import parse_overrides
    from harness.spec import load_spec
    from harness.store import Store
    from harness.store.records import comparison_to_dict
    from harness.tracking import check_tracker, track

    # Everything the user typed is checked before anything is trained or written.
    budget = None
    if args.budget is not None:
        from harness.estimate import parse_duration

        budget = parse_duration(args.budget)
    plugins, approaches = _approaches(args)
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
    data = _datasets(spec, args)
    check_output_target(args.json)
    storage = None
    if not args.dry_run:
        Store(args.store).check_writable()  # before hours of training, not after
        storage = checked_storage(args.storage)
    for warning in data_warnings(data_checks(data, spec.to_task())):
        print(f"harness: warning: {warning}", file=sys.stderr)

    console = make_console()
    plugins.pm.register(TerminalReporter(console, spec.metrics), name="terminal-reporter")
    options = CompareOptions(
        random_weights=args.random_weights,
        rerun=args.rerun,
        latency_samples=args.latency_samples,
        launcher=args.launcher,
        seeds=seeds,
        storage=storage,
    )
    if teacher_plan is not None and args.dry_run:
        console.print(f"teacher {teacher}: labels the training examples first (not estimated)")
    if not args.dry_run:  # --track mlflow: MLflow missing is one line, before the plan and anything trains
        check_tracker(args.track)
    # One store for the plan and the runs: what it warns of (a run deleted by hand) is said once.
    store = Store(args.store, read_only=args.dry_run)
    cost = _plan(plugins, spec, data, plans, store, options, args, console)
    if budget is not None:
        from harness.estimate import check_budget

        check_budget(cost, budget)
    if args.dry_run:
        return 0
    options.estimates = cost.estimates()
    track(args.track, plugins, store)
    if teacher_plan is not None:
        data, options.teacher = taught(plugins, spec, data, plans, teacher_plan, store, console)
    comparison = compare(plugins, spec, data, plans, store, options, console)
    from harness.estimate import against_actual
    from harness.report_plots import write_plots

    for line in against_actual(comparison.runs):
        console.print(line)

    write_plots(comparison, store.root / "comparisons" / comparison.comparison_id, store, console)
    if args.json is not None:
        write_json(args.json, comparison_to_dict(comparison))
    return 1 if any(run.status == "failed" for run in comparison.runs) else 0


def taught(
    plugins: Any, spec: Any, data: Any, plans: dict[str, Any], teacher_plan: Any, store: Any, console: Any
) -> tuple[Any, dict[str, Any]]:
    """The spec's data with its training examples labelled by the teacher (harness.teacher, its cache in the store),
    after the students' own checks; and what the teacher did, for every record. compare's and grid's."""
    from harness.comparison import check_approaches
    from harness.teacher import describe, teach

    check_approaches(plugins, spec, plans)  # the students' endpoints and commands too, before the teacher is asked
    data, done = teach(plugins, spec, data, teacher_plan, store, console)
    console.print(describe(done))
    return data, done


def grid_teacher(plugins: Any, spec: Any, approaches: list[str], items: list[str]) -> Any:
    """The plan of the spec's ``teacher:`` for a grid, with the one-valued ``--set`` of it (a teacher labels once
    per spec: several values of its settings are a one-line error), checked as compare checks it; None without one."""
    from harness.grid import variants
    from harness.planning import plan_settings
    from harness.teacher import check_teacher

    if not spec.teacher:
        return None
    shared, combos = variants(items)
    if spec.teacher in combos:
        raise UserError(
            f"{spec.teacher} is {spec.where}'s teacher, which labels once per spec: give its settings one value each",
            where="--set",
        )
    rows = [*approaches, spec.teacher] if spec.teacher not in approaches else approaches
    plan = plan_settings(plugins, spec, rows, {name: shared[name] for name in rows if name in shared})[spec.teacher]
    check_teacher(plan, f"{spec.where}: teacher")
    return plan


def cmd_grid(args: argparse.Namespace) -> int:
    import time

    from harness.comparison import compare
    from harness.files import write_json
    from harness.grid import grid_plans
    from harness.planning import CompareOptions
    from harness.report_terminal import TerminalReporter
    from harness.spec import load_spec
    from harness.store import Store
    from harness.store.records import comparison_to_dict
    from harness.tracking import track

    plugins, approaches = _approaches(args)
    if args.parallel is not None:
        positive(args.parallel, "--parallel")
    if args.cpus is not None:
        positive(args.cpus, "--cpus")
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
    # --set items of a spec's teacher that is no row of the grid are the teacher's alone.
    teachers_only = {spec.teacher for spec in specs if spec.teacher} - set(approaches)
    students = [item for item in args.overrides if item.partition(".")[0] not in teachers_only]
    grids = [(spec, grid_plans(plugins, spec, approaches, students)) for spec in specs]
    teachers = [grid_teacher(plugins, spec, approaches, args.overrides) for spec in specs]
    datas = [_datasets(spec, args) for spec in specs]
    check_output_target(args.json)
    Store(args.store).check_writable()
    storage = checked_storage(args.storage)
    resources = ray_resources(args.resources)
    if resources and args.executor != "ray":
        raise UserError("custom resources are Ray's: add --executor ray", where="--resource")
    units = sum(len(plans) for _, plans in grids) * len(seeds)
    launcher, host = "process", None
    if args.executor == "ray":  # a cluster that does not answer is one line, before the store is touched
        from harness import ray_executor

        ray_executor.start(args.address, args.cpus)
        ray_executor.RESOURCES.update(cpus=args.cpus_per_run, gpus=args.gpus_per_run, custom=resources)
        launcher = "ray"
        host = ray_executor.worker_host()  # reuse is looked up as a worker sees its machine, not the driver
    store = Store(args.store)
    console = make_console()
    plugins.pm.register(TerminalReporter(console, []), name="terminal-reporter")
    track(args.track, plugins, store)
    comparisons = []
    start = time.perf_counter()
    for (spec, plans), data, teacher_plan in zip(grids, datas, teachers):
        options = CompareOptions(
            random_weights=args.random_weights,
            latency_samples=args.latency_samples,
            launcher=launcher,
            seeds=seeds,
            parallel=(args.parallel or units) if launcher == "ray" else 1,
            storage=storage,
            host=host,
        )
        if teacher_plan is not None:  # the students of every row and seed learn from the same labels, asked once
            data, options.teacher = taught(plugins, spec, data, plans, teacher_plan, store, console)
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


def _approaches(args: argparse.Namespace) -> tuple[Plugins, list[str]]:
    """The installed plugins and the approaches ``--plugins`` names, distinct, with ``--latency-samples`` checked:
    how compare and grid begin."""
    from harness.plugins import load_plugins

    plugins = load_plugins()
    approaches = [name.strip() for name in args.plugins.split(",") if name.strip()]
    if not approaches or len(set(approaches)) != len(approaches):
        raise UserError(f"expected distinct plugin names separated by commas, got {args.plugins!r}", where="--plugins")
    positive(args.latency_samples, "--latency-samples")
    return plugins, approaches


def _plan(
    plugins: Plugins,
    spec: Spec,
    data: Datasets,
    plans: dict[str, Plan],
    store: Store,
    options: CompareOptions,
    args: argparse.Namespace,
    console: Any,
) -> CostPlan:
    """Print the plan before anything trains: each row's fate and steps, and what it is estimated to cost
    (harness.estimate). A dry run reads the store and writes nothing to it."""
    import os

    from harness.estimate import duration, plan_costs, plan_table
    from harness.progress import RunProgress

    cost = plan_costs(
        plugins,
        spec,
        data,
        plans,
        store,
        options,
        # HARNESS_CALIBRATE=0: figures from the store only (the test suite's default, to keep it short).
        calibrate_missing=os.environ.get("HARNESS_CALIBRATE", "1") != "0",
        keep_calibrations=not args.dry_run,
        progress=RunProgress(console),
        say=lambda line: console.print(f"[dim]{line}[/]"),
    )
    unknown = any(row.fate != "reused" and row.train_seconds is None for row in cost.rows)
    sizes = f"train {len(data.train)}, validation {len(data.validation)}, test {len(data.test)}"
    total = f"estimated {duration(cost.total_seconds())} on this machine" + (" and rows marked ?" if unknown else "")
    console.print(plan_table(cost, f"plan for {spec.name} ({sizes}): {total}"))
    return cost


def _datasets(spec: Spec, args: argparse.Namespace) -> Datasets:
    """The spec's data, or the files ``--data`` names, sampled as ``--limit-train`` and ``--limit-test`` ask."""
    from harness.data_load import load_datasets, parse_data_option

    return load_datasets(
        spec,
        data=parse_data_option(args.data) if args.data else None,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
    )
