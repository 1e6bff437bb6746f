"""A comparison: every planned run in turn (at once on Ray), the approaches checked before, the statistics after.

Each run is :func:`harness.runner.run_approach`'s; a run that fails is a failed row, and the others go on.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from harness.data_load import Datasets
from harness.errors import UserError
from harness.launch import LAUNCHERS
from harness.planning import CompareOptions, Plan
from harness.plugins import Plugins
from harness.runner import new_id, notify, now, run_approach
from harness.spec import Spec
from harness.store import Store
from harness.store.records import read_scored
from harness.types import Comparison, RunRecord


def compare(
    plugins: Plugins,
    spec: Spec,
    data: Datasets,
    plans: dict[str, Plan],
    store: Store,
    options: CompareOptions,
    console: Any = None,
) -> Comparison:
    """Run every planned approach (:func:`harness.planning.plan_settings`) in order; failures become failed rows."""
    if options.launcher not in LAUNCHERS:
        raise UserError(f"expected one of {', '.join(LAUNCHERS)}, got {options.launcher!r}", where="--launcher")
    check_approaches(plugins, spec, plans)
    comparison = Comparison(
        comparison_id=new_id(spec.name), spec=spec.name, created=now(), runs=[], metrics=spec.metrics
    )
    notify(plugins, "harness_compare_started", comparison=comparison)
    units = [(plan, seed) for plan in plans.values() for seed in options.seeds or spec.training_seeds]
    # What the runs hold (the data cache their units read, their directories, their load caches) is kept from
    # `harness store gc` until the compare ends: each run registers it (store.hold) before using it.
    with store.live():
        if options.parallel > 1 and len(units) > 1:
            # A grid on Ray: runs at once from threads of this process, each waiting on its units' Ray tasks. Runs
            # that share a trained model wait on its lock, so it is trained once, then reused.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=options.parallel, thread_name_prefix="harness-run") as pool:
                futures = [
                    pool.submit(run_approach, plugins, spec, data, plan, store, options, console, seed=seed)
                    for plan, seed in units
                ]
                comparison.runs.extend(future.result() for future in futures)
        else:
            for plan, seed in units:
                comparison.runs.append(run_approach(plugins, spec, data, plan, store, options, console, seed=seed))
        store.save_comparison(comparison)
        comparison.statistics = comparison_statistics(comparison, store)
        # A killed run that holds nothing to resume (no checkpoint, no finished model) is removed; every other
        # one is kept for the compare that resumes it, or for `harness store gc`.
        store.remove_empty_partials()
    notify(plugins, "harness_compare_finished", comparison=comparison)
    return comparison


def check_approaches(plugins: Plugins, spec: Spec, plans: dict[str, Plan]) -> None:
    """Each approach's ``check`` (an endpoint reached, a command found), once, before anything runs: what is
    missing outside harness is one line and exit 2 before an hour of training, not a failed row after it.

    A check names the setting at fault (``where="base_url"``); the line names the row too (``openai.base_url``),
    the place a user writes it in ``--set`` or a spec."""
    checked = set()
    for row, plan in plans.items():
        task = spec.to_task(plan.prompt_row or plan.trainer)
        for name, settings in ((plan.trainer, plan.train_settings), (plan.approach, plan.settings)):
            key = (name, json.dumps(settings, sort_keys=True, default=str))
            if key not in checked and plugins.implements(name, "check"):
                checked.add(key)
                try:
                    plugins.configured(name, settings).check(task)
                except UserError as exc:
                    if not exc.where or "." in exc.where.split(":")[0]:
                        raise
                    where = f"{row if name == plan.approach else name}.{exc.where}"
                    raise UserError(str(exc).removeprefix(f"{exc.where}: "), where=where) from None


def comparison_statistics(comparison: Comparison, store: Store) -> dict[str, Any]:
    """harness.stats_analysis.analyse over the runs' stored predictions; a failure costs one warning line and the
    statistics, never the table."""
    from harness import stats_analysis

    def scored(run: RunRecord) -> Any:
        return read_scored(store.run_dir(run.run_id) / "predictions.jsonl")

    try:
        return stats_analysis.analyse(comparison, scored)
    except ValueError as exc:  # runs of different test sets, say
        print(f"harness: no statistics: {exc}", file=sys.stderr)
        return {}
