"""pytest plugin (entry point ``pytest11``): benchmark an approach's predict under pytest-benchmark.

The ``harness_benchmark`` fixture trains (or builds with random weights) one approach on a spec's
data, then times its predict over the test split with ``benchmark.pedantic``: warm-up rounds first,
CUDA synchronised inside the timed call, one call per round. It returns the predictions so the test
can assert on them, and stores samples/s, batch size, device and the data hash in ``extra_info``.
See docs/benchmarking.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def harness_benchmark(request: pytest.FixtureRequest, tmp_path: Path):
    """``harness_benchmark(approach, spec, *, data=None, settings=None, ...)`` -> predictions.

    :param approach: the approach's name, as for ``--plugins``.
    :param spec: a spec name or YAML path.
    :param data: ``{"train": PATH, "test": PATH}`` instead of the spec's dataset.
    :param settings: setting overrides, as ``--set`` gives them (values may be typed).
    :param limit_train: a stratified sample of the training split.
    :param limit_test: a stratified sample of the test split: the benchmarked requests.
    :param random_weights: build the model from its config, untrained (speed only): no training examples,
        as ``harness bench --random-weights`` builds it (:func:`harness.bench.untrained`).
    :param rounds: timed rounds; pytest-benchmark reports their statistics.
    :param warmup_rounds: untimed rounds first.
    :param plugins: a :class:`harness.plugins.Plugins` to use instead of the installed plugins.
    """
    benchmark = request.getfixturevalue("benchmark")  # from pytest-benchmark

    def run(
        approach: str,
        spec: str,
        *,
        data: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
        limit_train: int | None = None,
        limit_test: int | None = None,
        random_weights: bool = False,
        rounds: int = 5,
        warmup_rounds: int = 1,
        plugins: Any = None,
    ):
        from harness import measure
        from harness.bench import trained, untrained
        from harness.data_load import load_datasets
        from harness.planning import plan_settings
        from harness.plugins import load_plugins
        from harness.progress import SILENT
        from harness.spec import load_spec
        from harness.units import without_answers

        plugins = plugins or load_plugins()
        loaded = load_spec(spec)
        overrides = {approach: {k: str(v) for k, v in (settings or {}).items()}}
        plan = plan_settings(plugins, loaded, [approach], overrides)[approach]
        datasets = load_datasets(loaded, data=data, limit_train=limit_train, limit_test=limit_test)
        # As compare does: the row's prompt (an engine's: the served row's); hooks go to the approach the row runs.
        task = loaded.to_task(plan.prompt_row or plan.trainer)
        (tmp_path / "train").mkdir()
        if random_weights:  # as `harness bench --random-weights` builds it
            artifact, call_settings = untrained(plugins, plan, task, tmp_path / "train")
        else:  # an engine serves what its approach trains: the approach trains, with its own settings
            artifact, call_settings = trained(
                plugins, plan, task, tmp_path / "train", datasets.train, datasets.validation, {"random_weights": False}
            )
        examples = without_answers(datasets.test)

        served = plugins.configured(plan.approach, call_settings, progress=SILENT)

        def predict():
            predictions = served.predict(task, artifact, examples)
            measure.cuda_sync()
            return predictions

        predictions = benchmark.pedantic(predict, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
        benchmark.extra_info.update(
            approach=approach,
            samples=len(examples),
            batch_size=call_settings.get("predict_batch_size"),
            device=measure.device_name(artifact.state.get("device") or artifact.device),
            test_hash=datasets.test_hash,
            random_weights=random_weights,
        )
        stats = getattr(benchmark, "stats", None)
        if stats is not None and getattr(stats, "stats", None) is not None:
            benchmark.extra_info["samples_per_s"] = len(examples) / stats.stats.median
        return predictions

    return run
