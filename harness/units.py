"""What a unit does with its job: train and save the model, load it and time its predictions, or calibrate.

A run is two units of work: **train** (the approach's train hook; writes the artifact and its ``artifact.json``)
and **measure** (load the stored artifact, warm up, predict the test set, sample batch-1 latency; writes
``predictions.jsonl``). A third kind, **calibrate**, trains a few timed steps on a sample and serves a few
examples, for the plan's estimate (:mod:`harness.calibration`). A unit is a plain function of a picklable job:
:mod:`harness.launch` runs it in a process of its own (or inline), :mod:`harness.ray_executor` as a Ray task.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from harness import identity, measure
from harness.data_cache import read_data_cache
from harness.load_cache import load_cached
from harness.progress import Bar, RunProgress
from harness.seeding import seed_everything
from harness.store.artifacts import TRAIN_RESULT  # the train unit's figures, beside artifact.json, written last
from harness.types import Artifact, Example, Parity, Prediction, Task

# What to lower when training runs out of memory, where an approach has them.
TRAIN_MEMORY_SETTINGS = ("per_device_train_batch_size", "max_length")


def training_memory_advice(settings: dict[str, Any]) -> str:
    """What to change when training ran out of accelerator memory: the settings to lower, and gradient
    checkpointing where the approach has it and it is not on."""
    lower = [f"{key} (now {settings[key]})" for key in TRAIN_MEMORY_SETTINGS if settings.get(key)]
    advice = (
        "out of accelerator memory while training; lower "
        + (" or ".join(lower) or "the batch size")
        + ", and raise gradient_accumulation_steps to keep the effective batch"
    )
    checkpointing = settings.get("gradient_checkpointing", True)
    if checkpointing is not True:
        advice += f"; or set gradient_checkpointing: true (now {str(checkpointing).lower()})"
    return advice


class OutOfMemory(RuntimeError):
    """Training ran out of accelerator memory: the message names the settings to lower."""


class AnswersFailed(RuntimeError):
    """Most answers of the timed pass failed (an endpoint's requests, after retries): the row has no result to
    speak of, and is a failed row, never stored ``ok`` or reused."""


# ---------------------------------------------------------------------------------------------
# Jobs: everything a unit needs, picklable.
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainJob:
    approach: str
    task: Task
    data_file: Path
    settings: dict[str, Any]
    workdir: Path
    seed: int
    storage: str | None = None  # artifacts in storage (harness.storage): trained in a local folder, written back
    storage_key: str | None = None  # the artifact's place there, runs/<run_id>/artifact


@dataclass
class MeasureJob:
    approach: str
    task: Task
    data_file: Path
    settings: dict[str, Any]
    artifact_file: Path
    predictions_file: Path
    seed: int
    latency_samples: int
    warmup_examples: int
    cache_dir: Path | None = None  # harness_load's own place for what it derives from the trained model
    # With storage (harness.storage): the trained model is artifact_key in artifact_storage, and the predictions
    # go to predictions_key in storage (the run's own storage), each through a local copy on this machine.
    artifact_storage: str | None = None
    artifact_key: str | None = None
    storage: str | None = None
    predictions_key: str | None = None


# ---------------------------------------------------------------------------------------------
# The units.
# ---------------------------------------------------------------------------------------------


def train_unit(plugins: Any, job: TrainJob, progress: RunProgress) -> dict[str, Any]:
    """Train, save ``artifact.json`` beside the model, and return the training figures."""
    from harness.store import save_artifact, write_json

    if job.storage and job.storage_key:
        with _mirrored(job, progress) as local:
            return train_unit(plugins, local, progress)
    seed_everything(job.seed)
    data = read_data_cache(job.data_file)
    job.workdir.mkdir(parents=True, exist_ok=True)
    try:
        with measure.PeakMemory() as memory:
            approach = plugins.configured(job.approach, job.settings, workdir=job.workdir, progress=progress)
            artifact, seconds = measure.timed(lambda: approach.train(job.task, data.train, data.validation))
    except Exception as exc:
        if not measure.is_out_of_memory(exc):
            raise
        raise OutOfMemory(training_memory_advice(job.settings)) from None
    if not isinstance(artifact, Artifact):
        raise TypeError(f"harness_train returned {type(artifact).__name__}, not an Artifact")
    save_artifact(artifact, job.workdir)
    carried = sum(progress.carried.values())  # a resumed run: the killed part's time up to its checkpoint
    result = {
        "seconds": seconds + carried,
        "seconds_before_resume": carried or None,
        "phases": dict(progress.phases),
        "rss_peak_mb": memory.rss_peak_mb,
        "gpu_peak_mb": memory.gpu_peak_mb,
    }
    write_json(job.workdir / TRAIN_RESULT, result)  # last: its presence says training finished
    return {**result, "host": identity.host()}  # the machine as this unit saw it (a Ray worker's)


@contextmanager
def _mirrored(job: TrainJob, progress: RunProgress) -> Iterator[TrainJob]:
    """A train job with storage as one that trains in a local folder, mirrored to storage (checkpoints as they are
    saved, the model and the training log when it is done); resumed from the newest checkpoint there, with the log
    lines before it."""
    import shutil

    from harness.hf_trainer import log_lines_until
    from harness.storage import ACTIVE, Mirror, local_place

    assert job.storage and job.storage_key
    local = local_place(job.storage, job.storage_key)
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    mirror = Mirror(job.storage, job.storage_key, local)
    lines: list[dict[str, Any]] = []  # the run's training log, written beside its model in storage
    forward = progress.log

    def log(**entry: Any) -> None:
        lines.append(entry)
        forward(**entry)

    progress.log = log  # type: ignore[method-assign]
    kept = mirror.fetch_checkpoint()
    if kept is not None:
        step = int(kept.rpartition("-")[2])
        for entry in log_lines_until(local / "checkpoints" / kept / "trainer_state.json", step) or []:
            progress.log(**entry)
    ACTIVE.append(mirror)
    try:
        yield replace(job, workdir=local, storage=None, storage_key=None)
    finally:
        ACTIVE.remove(mirror)
        progress.log = forward  # type: ignore[method-assign]
    mirror.finish(TRAIN_RESULT, lines)
    if mirror.storage.local:  # a directory on this machine: served from there, no second copy kept
        shutil.rmtree(local, ignore_errors=True)
    else:
        (local / ".complete").write_text("", encoding="utf-8")  # the measure unit on this machine reads it here


def measure_unit(plugins: Any, job: MeasureJob, progress: RunProgress) -> dict[str, Any]:
    """Load the stored artifact, then time predict on the serving model alone; write the predictions."""
    from harness.store import load_artifact, write_predictions

    if job.storage or job.artifact_storage:
        return _measure_from_storage(plugins, job, progress)
    seed_everything(job.seed)
    data = read_data_cache(job.data_file)
    test = without_answers(data.test)
    artifact, (serving, settings), load_seconds, build_seconds = load_cached(
        plugins, job.approach, job.task, lambda: load_artifact(job.artifact_file), job.settings, job.cache_dir
    )
    first_batch = settings.get("predict_batch_size")
    notes: list[str] = []  # the core's own notes; the Serving's (which predict may add to: a server's
    # fingerprint) come first, read after the timed pass
    measure.release_memory()  # what loading left behind is not serving memory

    approach = plugins.configured(job.approach, settings)

    def predict(examples: list[Example], bar: RunProgress | None = None) -> list[Prediction]:
        nonlocal settings, approach
        while True:
            try:
                result = approach.predict(job.task, artifact, examples, progress=bar or SILENT_PROGRESS)
                break
            except Exception as exc:
                batch = settings.get("predict_batch_size") or 0
                if not measure.is_out_of_memory(exc) or batch <= 1:
                    raise
                # Out of memory: half the batch, again, until it fits; the figures are those of the batch that fit.
                settings = {**settings, "predict_batch_size": batch // 2}
                approach = plugins.configured(job.approach, settings)
                measure.release_memory()
        check_predictions(result, examples)
        return result

    with measure.PeakMemory() as memory:
        predict(test[: job.warmup_examples])  # first kernels, caches, lazy loads
        while True:  # timed again if the batch had to be halved part-way: the figure is the fitting batch's
            tried = settings.get("predict_batch_size")
            predictions, seconds = measure.timed(lambda: predict(test, progress))
            if settings.get("predict_batch_size") == tried:
                break
        failed = [p.error for p in predictions if p.error]
        if 2 * len(failed) > len(predictions):  # judged on the timed pass alone, not warm-up or latency requests
            raise AnswersFailed(
                f"{len(failed)} of {len(predictions)} answers failed (first: {failed[0]})".splitlines()[0]
            )
        latency = measure.sampled_batch1_latency(lambda ex: predict([ex]), test, job.latency_samples)
    write_predictions(job.predictions_file, predictions, data.test)
    parity = None
    if approach.implements("parity"):
        parity = approach.parity(job.task, artifact, test)
        if parity is not None and not isinstance(parity, Parity):
            raise TypeError(f"harness_parity must return a Parity, got {type(parity).__name__}")
    batch_size = settings.get("predict_batch_size")
    if failed:
        notes.append(f"{len(failed)} of {len(predictions)} answers failed and count as wrong (first: {failed[0]})")
    if batch_size != first_batch:
        notes.append(
            f"predict_batch_size {first_batch} ran out of accelerator memory; measured at {batch_size}, "
            "the largest halving that fit"
        )
    return {
        "notes": [*(serving.notes if serving else []), *notes],
        "speed": {
            "load_seconds": load_seconds if approach.implements("load") else None,
            "build_seconds": build_seconds,
            "predict_seconds": seconds,
            "predict_samples_per_s": len(test) / seconds if seconds > 0 else None,
            **generation_speed(predictions, seconds),
            "predict_batch_size": batch_size,
            **latency.summary(),
        },
        "memory": {"predict_rss_peak_mb": memory.rss_peak_mb, "predict_gpu_peak_mb": memory.gpu_peak_mb},
        # Where it ran (a Ray worker, not the driver): the record's environment and measurement identity.
        "host": identity.host(),
        "environment": measure.environment((serving.device if serving else None) or artifact.device),
        "serving": {**(asdict(serving) if serving else {}), **({"parity": asdict(parity)} if parity else {})},
        "truncated_predict": sum(1 for p in predictions if p.truncated),
    }


def _measure_from_storage(plugins: Any, job: MeasureJob, progress: RunProgress) -> dict[str, Any]:
    """A measure job with storage: the artifact from a local copy, the predictions written back; what harness_load
    derives from a model in storage cached on this machine's disk."""
    import tempfile

    from harness.storage import local_copy, local_place, open_storage

    local = replace(job, artifact_storage=None, storage=None)
    if job.artifact_storage and job.artifact_key:
        local.artifact_file = local_copy(job.artifact_storage, job.artifact_key) / "artifact.json"
        if job.cache_dir is not None:
            local.cache_dir = local_place(
                job.artifact_storage, f"load-cache/{job.cache_dir.parent.name}/{job.cache_dir.name}"
            )
            local.cache_dir.parent.mkdir(parents=True, exist_ok=True)
    if not (job.storage and job.predictions_key):
        return measure_unit(plugins, local, progress)
    with tempfile.TemporaryDirectory(prefix="harness-predictions-") as scratch:
        local.predictions_file = Path(scratch) / "predictions.jsonl"
        result = measure_unit(plugins, local, progress)
        open_storage(job.storage).put_file(local.predictions_file, job.predictions_key)
    return result


def generation_speed(predictions: list[Prediction], seconds: float) -> dict[str, Any]:
    """Generated tokens and tokens/s of the timed pass, where the approach generates (and counts them), and the
    prompt tokens a server reported."""
    counted = [p.generated_tokens for p in predictions if p.generated_tokens is not None]
    prompts = [p.prompt_tokens for p in predictions if p.prompt_tokens is not None]
    figures: dict[str, Any] = {"prompt_tokens": sum(prompts)} if prompts else {}
    if not counted or seconds <= 0:
        return figures
    return {**figures, "generated_tokens": sum(counted), "generated_tokens_per_s": sum(counted) / seconds}


SILENT_PROGRESS = RunProgress()


def without_answers(examples: list[Example]) -> list[Example]:
    """The examples as predict sees them: gold labels and fields removed, so no approach can peek."""
    return [replace(ex, label=None, fields=None) for ex in examples]


def check_predictions(predictions: Any, examples: list[Example]) -> None:
    """The predict contract: a list of Prediction, one per example."""
    if not isinstance(predictions, list) or not all(isinstance(p, Prediction) for p in predictions):
        raise TypeError("harness_predict must return a list of Prediction")
    if len(predictions) != len(examples):
        raise ValueError(f"harness_predict returned {len(predictions)} predictions for {len(examples)} examples")


class StepClock(RunProgress):
    """A progress sink that keeps the time of every step of the training bar (``train``) and the phases."""

    def __init__(self) -> None:
        super().__init__()
        self.step_times: list[float] = []  # perf_counter at the bar's start, then at each step's end
        self.train_start: float | None = None

    def bar(self, description: str, total: float | None) -> Any:
        from contextlib import contextmanager

        clock = self

        class _Timed(Bar):
            def advance(self, n: float = 1) -> None:
                clock.step_times.append(time.perf_counter())

        @contextmanager
        def timed() -> Iterator[Bar]:
            if description == "train":
                clock.train_start = time.perf_counter()
                yield _Timed(None, None)
            else:
                yield Bar(None, None)

        return timed()


@dataclass
class CalibrateJob:
    trainer: str
    approach: str
    task: Any
    data_file: Path
    train_settings: dict[str, Any]
    settings: dict[str, Any]
    workdir: Path
    seed: int
    latency_samples: int = 5


def calibrate_unit(plugins: Any, job: CalibrateJob, progress: RunProgress) -> dict[str, Any]:
    """Train a few steps, evaluate once, load what was trained and serve a few examples; return the timings."""

    seed_everything(job.seed)
    data = read_data_cache(job.data_file)
    clock = StepClock()
    with measure.PeakMemory() as train_memory:
        trainer = plugins.configured(job.trainer, job.train_settings, workdir=job.workdir, progress=clock)
        artifact, train_seconds = measure.timed(lambda: trainer.train(job.task, data.train, data.validation))
    steps = [b - a for a, b in zip([clock.train_start or 0.0, *clock.step_times], clock.step_times)]
    phases = dict(clock.phases)
    # After the last step: the evaluation (its own phase), the checkpoint the Trainer saves with it and the best
    # model loaded back: the train loop's time that no step took.
    after_steps = 0.0
    if clock.train_start is not None and clock.step_times:
        after_steps = max(0.0, phases.get("train_loop", 0.0) - (clock.step_times[-1] - clock.train_start))
    measure.release_memory()
    test = without_answers(data.test)
    with measure.PeakMemory() as serve_memory:
        loaded, (_, settings), load_seconds, _ = load_cached(
            plugins, job.approach, job.task, lambda: artifact, job.settings, None
        )
        server = plugins.configured(job.approach, settings)
        server.predict(job.task, loaded, test[:8])  # warm up
        _, predict_seconds = measure.timed(lambda: server.predict(job.task, loaded, test[8:]))
        latency = measure.batch1_latency(lambda ex: server.predict(job.task, loaded, [ex]), test[: job.latency_samples])
    return {
        "train_seconds": train_seconds,
        "phases": phases,
        "step_seconds": steps,
        "after_steps": after_steps,
        "n_train": len(data.train),
        "n_validation": len(data.validation),
        "train_rss_mb": train_memory.rss_peak_mb,
        "serve_load": load_seconds,
        "predict_per_example": predict_seconds / max(1, len(test) - 8),
        "latency": (latency.summary().get("latency_p50_ms") or 0.0) / 1000,
        "serve_rss_mb": serve_memory.rss_peak_mb,
    }


UNITS: dict[str, Callable[[Any, Any, RunProgress], dict[str, Any]]] = {
    "train": train_unit,
    "measure": measure_unit,
    "calibrate": calibrate_unit,  # a few timed steps and predictions, for the plan (harness.calibration)
}
