"""The hooks of harness. Every hook is documented in docs/plugins.md; a test keeps the two in step.

An implementation may accept any subset of a hook's arguments, so arguments can be added later
without breaking plugins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy

from harness.types import ApproachInfo, Artifact, Comparison, Example, Parity, Prediction, RunRecord, Serving, Task

hookspec = pluggy.HookspecMarker("harness")

# ---------------------------------------------------------------------------------------------
# Registration: every implementation is called; each registers approach objects.
# ---------------------------------------------------------------------------------------------


@hookspec
def harness_register_approaches(register: Any) -> None:
    """Register this plugin's approaches: call ``register(approach)`` once for each.

    :param register: takes an :class:`harness.approach.Approach` instance (its ``name`` is what
        ``--plugins`` selects). One module may register several approaches (qwen and qwen-lora).
    """


# ---------------------------------------------------------------------------------------------
# Hook-style approaches: the core calls these on one plugin at a time (the plugin selected by name).
# A registered Approach is the contract to write against; these hooks remain for plugins written
# before it, and the core adapts a registered approach's methods to the same calls.
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def harness_describe() -> ApproachInfo | None:
    """Declare what this approach supports.

    :return: the task types it handles and its default settings (every key a spec may set).
        Stops at first non-None result.
    """


@hookspec(firstresult=True)
def harness_train(
    task: Task,
    train: list[Example],
    validation: list[Example],
    settings: dict[str, Any],
    workdir: Path,
    progress: Any,
) -> Artifact | None:
    """Train the approach on ``train``, selecting checkpoints on ``validation``.

    :param task: the task type, label or field names and prompt.
    :param train: the training examples, identical for every approach.
    :param validation: held-out examples for evaluation during training (may be empty).
    :param settings: the approach's defaults merged with the spec and ``--set`` overrides;
        ``random_weights`` is True when the model must be built from its config without weights.
        Python, NumPy and torch are seeded with the spec's seed before the hook runs.
    :param workdir: an empty directory of this run's own, for checkpoints and the final model.
    :param progress: a :class:`harness.progress.RunProgress`: ``track()`` for progress bars,
        ``log()`` for training log lines (step, epoch, loss, eval metrics), ``phase()`` to time
        ``load``, ``prepare``, ``train_loop``, ``evaluation`` and ``save`` separately.
    :return: the trained artifact, its model saved under ``workdir`` (``Artifact.path``); zero-shot
        approaches return one without training. Stops at first non-None result.
    """


@hookspec(firstresult=True)
def harness_load(task: Task, artifact: Artifact, settings: dict[str, Any], cache_dir: Path | None) -> Serving | None:
    """Make a trained artifact ready to serve.

    Load it from ``artifact.path`` (or the base model, when nothing was trained), move it to its device
    and cast it, keeping it in ``artifact.state``. What it derives from the model to serve it (an ONNX
    export, a merged LoRA model, a compiled engine) goes in ``cache_dir``, a directory of its own per
    trained model and serving settings: the first load that writes there is timed as the build, and
    every later one loads what it built. ``cache_dir`` is None where there is nowhere to keep it.

    Optional. The core calls it once per measuring process, before any prediction is timed, and resets
    the memory peaks after it: serving memory is the loaded model plus what predict needs.

    :param task: as for train.
    :param artifact: the stored artifact, ``state`` empty.
    :param settings: as for predict.
    :param cache_dir: a directory of its own for what it derives to serve, or None.
    :return: the device, dtype and default batch size it will serve with. Stops at first non-None result.
    """


@hookspec(firstresult=True)
def harness_reference(task: Task, artifact: Artifact, settings: dict[str, Any]) -> Any:
    """The loaded model called directly, for the ``raw`` row of ``harness bench``.

    It shows what the harness's own predict path costs on top of the bare model.

    Optional. Called after ``harness_load``. Return a function that takes a list of texts and does what a
    user would write by hand with the same model and settings: tokenize them as one padded batch, run the
    forward pass under ``torch.inference_mode``, take the answer (argmax), synchronise the device. No
    length bucketing, no Prediction objects, no harness code in between.

    :param task: as for train.
    :param artifact: the artifact, after ``harness_load``.
    :param settings: as for predict.
    :return: ``forward(texts: list[str]) -> None``. Stops at first non-None result.
    """


@hookspec(firstresult=True)
def harness_predict(
    task: Task,
    artifact: Artifact,
    examples: list[Example],
    settings: dict[str, Any],
    progress: Any,
) -> list[Prediction] | None:
    """Predict every example, batched as the approach sees fit.

    :param task: as for train.
    :param artifact: the stored artifact after ``harness_load``; ``artifact.state`` caches loaded
        models between calls.
    :param examples: the examples to predict, without their gold answers.
    :param settings: as for train; ``predict_batch_size`` is the batch the core asks for (the setting,
        or when that is 0 the batch ``harness_load`` reported).
    :param progress: as for train; ``track()`` draws a bar when the core wants one.
    :return: exactly one :class:`Prediction` per example, in the order given.
        Stops at first non-None result.
    """


@hookspec(firstresult=True)
def harness_check(task: Task, settings: dict[str, Any]) -> None:
    """Make sure what the approach needs outside harness is there, before anything trains or serves.

    Optional. Called once per selected approach (and the approach an engine serves) in the process that
    runs the compare, before the first run: reach an endpoint, check a key or a command. Raise
    :class:`harness.errors.UserError` with one line saying what is missing; the compare stops with exit 2.

    :param task: as for train.
    :param settings: as for predict.
    """


@hookspec(firstresult=True)
def harness_parity(task: Task, artifact: Artifact, examples: list[Example], settings: dict[str, Any]) -> Parity | None:
    """Check that what serves answers as the model it was derived from.

    A merged adapter against the adapter, an ONNX export against PyTorch.

    Optional. Called once per measurement after the timed pass (not timed), on the test examples without
    their answers. A :class:`Parity` with ``ok`` False fails the row with its one-line ``message``; the
    figures are recorded in the row's ``serving.parity`` either way.

    :param task: as for train.
    :param artifact: the artifact after ``harness_load``, serving.
    :param examples: the test examples, without their gold answers.
    :param settings: as for predict.
    :return: a Parity, or None when there is nothing to check. Stops at first non-None result.
    """


# ---------------------------------------------------------------------------------------------
# Scoring: every implementation is called and the results are merged.
# ---------------------------------------------------------------------------------------------


@hookspec
def harness_score(
    task: Task, examples: list[Example], predictions: list[Prediction], approach: str
) -> dict[str, Any] | None:
    """Compute metrics of ``predictions`` against the gold answers in ``examples``.

    The core's own metrics (accuracy, precision/recall/F1 weighted and macro, per class, confusion
    matrix) are one implementation; any plugin may add metrics of its own.

    :param task: as for train.
    :param examples: the gold examples.
    :param predictions: one per example, in the same order.
    :param approach: the name of the approach that made the predictions.
    :return: a dict of metric name to value, merged with every other implementation's; None to add nothing.
    """


# ---------------------------------------------------------------------------------------------
# Events: listeners (the terminal reporter, your own loggers) implement these.
# ---------------------------------------------------------------------------------------------


@hookspec
def harness_compare_started(comparison: Comparison) -> None:
    """A comparison is about to run its rows: what a tracker opens its record of the comparison on.

    :param comparison: its ``comparison_id``, ``spec``, ``created`` and ``metrics``; ``runs`` is empty.
    """


@hookspec
def harness_run_started(run: RunRecord) -> None:
    """An approach is about to train and predict.

    :param run: the run's record so far: approach, spec, settings, data hashes; ``status`` is ``running``.
    """


@hookspec
def harness_training_log(run: RunRecord, entry: dict[str, Any]) -> None:
    """A training log line: loss at a logging step, or metrics at an evaluation step.

    :param run: the run being trained.
    :param entry: ``step`` and ``epoch``, plus ``loss`` or ``eval_*`` metrics.
    """


@hookspec
def harness_run_finished(run: RunRecord) -> None:
    """An approach finished, failed or was reused from the store.

    :param run: the complete record: metrics, speed, memory, model, environment, or the error.
    """


@hookspec
def harness_compare_finished(comparison: Comparison) -> None:
    """Every selected approach has a record.

    :param comparison: the comparison with its runs, in the order the approaches were asked for.
    """
