"""``harness bench``: one approach's serving speed, measured through :mod:`harness.bench`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.commands.checks import check_output_target, positive
from harness.commands.output import make_console
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.plugins import Configured


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
    from harness.comparison import check_approaches
    from harness.data_load import load_datasets, parse_data_option
    from harness.files import write_json
    from harness.planning import plan_settings
    from harness.plugins import load_plugins
    from harness.progress import SILENT
    from harness.settings import parse_overrides
    from harness.spec import load_spec
    from harness.store import Store
    from harness.units import without_answers

    try:
        batch_sizes = [positive(int(b), "--batch-sizes") for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise UserError(
            f"expected sizes separated by commas, got {args.batch_sizes!r}", where="--batch-sizes"
        ) from None
    for flag in ("rounds", "latency_samples", "concurrency", "requests"):
        positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    # A closed loop of N clients never has more than N requests waiting: a larger limit could only add waiting.
    max_batch = args.concurrency if args.max_batch is None else positive(args.max_batch, "--max-batch")
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

    # Settings validated once per settings dict bench times with (one per batch size), not in every timed call.
    configured: dict[int, tuple[dict[str, Any], Configured]] = {}

    def predict(examples, call_settings):
        held = configured.get(id(call_settings))
        if held is None or held[0] is not call_settings:
            held = configured[id(call_settings)] = (call_settings, plugins.configured(plan.approach, call_settings))
        return held[1].predict(task, artifact, examples, progress=SILENT)

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
    make_console().print(bench_table(result))
    if args.json is not None:
        write_json(args.json, asdict(result))
    return 0
