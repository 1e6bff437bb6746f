"""Running one approach: reuse a stored row or model, resume a killed run, or train; then measure and score.

For each run the runner computes two identities (:mod:`harness.run_identity`): a stored row with the same
measurement identity is reused whole; else a stored model with the same training identity is measured
again without training; else a killed run of the same training identity resumes where it stopped; else the
approach trains. Training and measuring run as units (:mod:`harness.units`) through :mod:`harness.launch`;
the parent scores, stores and reports. :mod:`harness.comparison` runs every row of a comparison this way.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from harness import identity, measure
from harness.data_cache import data_cache_file, write_data_cache
from harness.data_load import Datasets, data_checks
from harness.files import write_text
from harness.hf_trainer import log_lines_until
from harness.launch import UnitFailed, run_unit
from harness.load_cache import load_cache_dir
from harness.planning import CompareOptions, Plan
from harness.plugins import Plugins
from harness.progress import RunProgress
from harness.run_identity import (
    measurement_identity,
    on_unit_hosts,
    training_identity,
    training_reason,
    what_changed,
)
from harness.spec import Spec
from harness.storage import open_storage, run_key
from harness.store import Store
from harness.store.artifacts import TRAIN_RESULT, RunArtifacts, mark, run_artifacts
from harness.store.comparisons import shown_as
from harness.store.records import artifact_from_json, read_predictions, read_scored
from harness.types import Example, Prediction, RunRecord, Task
from harness.units import MeasureJob, TrainJob


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(prefix: str) -> str:
    """A run or comparison id: time, the name (a grid row's ``bert@learning_rate=1e-5`` as ``bert.learning_rate.1e-5``:
    the characters a path and a run id take), a random suffix."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", ".", prefix).strip(".") or "run"
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{safe}-{secrets.token_hex(3)}"


def run_approach(
    plugins: Plugins,
    spec: Spec,
    data: Datasets,
    plan: Plan,
    store: Store,
    options: CompareOptions,
    console: Any = None,
    seed: int | None = None,
) -> RunRecord:
    """One run: reused whole, measured on a stored trained model, or trained and measured, with ``seed``
    (default: the spec's first training seed) seeding the unit processes and given as ``settings["seed"]``."""
    from harness.redaction import redact_settings

    seed = spec.training_seeds[0] if seed is None else seed
    plan = replace(plan, settings={**plan.settings, "seed": seed}, train_settings={**plan.train_settings, "seed": seed})
    name = plan.name
    task = spec.to_task(plan.prompt_row or plan.trainer)  # an engine serves with the prompt its model was trained on
    record = RunRecord(
        run_id=new_id(name),
        approach=name,
        spec=spec.name,
        task_type=task.type,
        seed=seed,
        settings=redact_settings({k: SECRET if k in plan.secrets else v for k, v in plan.settings.items()}),
        random_weights=options.random_weights,
        train_hash=data.train_hash,
        test_hash=data.test_hash,
        n_train=len(data.train),
        n_validation=len(data.validation),
        n_test=len(data.test),
        created=now(),
    )
    record.estimate = dict(options.estimates.get((name, seed), {}))
    record.environment["validation_source"] = data.validation_source
    if spec.prompt_name(plan.prompt_row or plan.trainer):
        record.environment["prompt"] = f"task.prompts.{spec.prompt_name(plan.prompt_row or plan.trainer)}"
    if plan.name != plan.approach:
        record.environment["runs"] = plan.approach  # a row of the spec's that runs another approach
    record.environment["data_checks"] = data_checks(data, task)
    if options.teacher:
        record.environment["teacher"] = options.teacher
    if task.type == "extraction":
        record.environment["normalize"] = task.normalize  # how its field values are compared (the statistics too)
    try:
        here = replace(options, host=options.host or identity.host())  # this machine read once for both identities
        training = training_identity(plugins, spec, data, plan, task, here, store)
        train_key = identity.digest(training)
        measurement = measurement_identity(plugins, data, plan, train_key, here, store)
        record.training = {"key": train_key, "identity": training, "trained_in": None}
        record.measurement = {"key": identity.digest(measurement), "identity": measurement}
    except Exception as exc:  # an unreadable model directory, say: this row fails, the others run
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
        store.finish_run(record)
        notify(plugins, "harness_run_finished", run=record)
        return record

    def waiting() -> None:
        print(
            f"harness: {name} (seed {seed}): another harness process is training or measuring the same model "
            "on this store; waiting for it to finish, to reuse its run",
            file=sys.stderr,
        )

    # One process at a time per training identity: a second identical compare waits, then reuses. What the run
    # holds is kept from cleanup until it ends (until its compare ends, inside one).
    with store.live(), store.lock(train_key, on_wait=waiting):
        return _run_locked(plugins, data, plan, store, options, console, record, task, seed)


def _run_locked(
    plugins: Plugins,
    data: Datasets,
    plan: Plan,
    store: Store,
    options: CompareOptions,
    console: Any,
    record: RunRecord,
    task: Task,
    seed: int,
) -> RunRecord:
    name, train_key = plan.name, record.training["key"]
    if not options.rerun:
        previous = store.find_measured(record.measurement["key"])
        if previous is not None:
            # The stored run, shown under this row's name and seed (its record.json keeps the name it was made under).
            reused = shown_as(previous, name, seed, "reused")
            _rescore(plugins, store, reused, task)
            notify(plugins, "harness_run_finished", run=reused)
            return reused
    source = None if options.rerun else store.find_trained(train_key)
    resumed = None if options.rerun or source is not None else store.resume_partial(train_key)
    log_file = None
    if resumed is not None:
        # The killed run goes on as itself: its id, its directory, its training log up to what it resumes from.
        workdir, record.run_id = resumed
        artifacts = run_artifacts(workdir)
        kept = artifacts.progress()
        record.training["resumed"] = {"run": record.run_id, "from": kept}
        # From a checkpoint in storage the train unit itself logs the lines before it again (wherever it runs).
        in_unit = artifacts.uri is not None and (kept or "").startswith("checkpoint-")
        record.train_log = [] if in_unit else _log_until(workdir / "train_log.jsonl", kept)
        log_file = workdir / "train_log.jsonl"
        write_text(log_file, "".join(json.dumps(entry, default=str) + "\n" for entry in record.train_log))
    else:
        workdir = store.start_run(record.run_id, {"train_key": train_key, "measure_key": record.measurement["key"]})
        if options.storage:
            mark(workdir, options.storage)
        artifacts = run_artifacts(workdir)
        log_file = workdir / "train_log.jsonl"
    if artifacts.uri is not None:
        record.environment["storage"] = artifacts.uri
    notify(plugins, "harness_run_started", run=record)

    def on_log(entry: dict[str, Any]) -> None:
        record.train_log.append(entry)
        with log_file.open("a", encoding="utf-8") as handle:  # on disk as it is written: a kill loses no line
            handle.write(json.dumps(entry, default=str) + "\n")
        notify(plugins, "harness_training_log", run=record, entry=entry)

    progress = RunProgress(console, on_log)
    error_detail = None
    measured: dict[str, Any] = {}
    try:
        cache_dir = load_cache_dir(store, train_key, record.measurement["identity"])
        # Held from cleanup before they are used (until the compare ends); then the data cache is written if
        # missing, also if a cleanup had just removed it.
        store.hold(workdir, data_cache_file(data, store.root / "data"), cache_dir)
        data_file = write_data_cache(data, store.root / "data")
        model = artifacts
        if source is not None:
            _reuse_training(record, source)
            model = store.artifacts(source.run_id)
        elif artifacts.exists(TRAIN_RESULT):  # a killed run had finished training: measure its model
            _record_training(record, artifacts.read_json(TRAIN_RESULT), artifacts)
        else:
            record.training["reason"] = training_reason(store, record, options.rerun)
            train_job = TrainJob(
                plan.trainer,
                task,
                data_file,
                {**plan.train_settings, "random_weights": options.random_weights},
                artifacts.folder,
                seed,
                artifacts.uri,
                artifacts.key if artifacts.uri else None,
            )
            result = _unit("train", train_job, plugins, progress, options.launcher)
            _record_training(record, result, artifacts)
            on_unit_hosts(record, result.get("host"), None)
        measure_job = MeasureJob(
            plan.approach,
            task,
            data_file,
            {**plan.settings, "random_weights": options.random_weights},
            model.folder / "artifact.json",
            workdir / "predictions.jsonl",
            seed,
            options.latency_samples,
            options.warmup_examples,
            cache_dir,
            artifact_storage=model.uri,
            artifact_key=model.key if model.uri else None,
            storage=artifacts.uri,
            predictions_key=run_key(record.run_id, "predictions.jsonl") if artifacts.uri else None,
        )
        measured = _measure(plugins, measure_job, progress, record, options)
        on_unit_hosts(record, None, measured["host"])
        if artifacts.uri is not None:  # the driver's copy, which scoring and reports read
            open_storage(artifacts.uri).get_file(measure_job.predictions_key or "", workdir / "predictions.jsonl")
        record.metrics = _score(plugins, name, task, data.test, read_predictions(workdir / "predictions.jsonl"))
        parity = record.serving.get("parity")
        if parity and not parity.get("ok", True):  # predictions and figures are kept; the row says why it failed
            record.status, record.error = "failed", f"parity: {parity.get('message') or 'failed'}"
        else:
            record.status = "ok"
    except UnitFailed as exc:
        record.status, record.error, error_detail = "failed", str(exc), exc.detail or None
    except Exception as exc:  # one approach failing must not lose the others' results
        import traceback

        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
        error_detail = traceback.format_exc()
    if "environment" not in measured:  # it failed before measuring: this machine's
        measured["environment"] = measure.environment(record.serving.get("device") or record.model.get("device"))
    record.environment.update(measured["environment"])
    hidden = [str(plan.settings[k]) for k in plan.secrets if len(str(plan.settings.get(k) or "")) >= 4]
    record.error, error_detail = (_hide(text, hidden) for text in (record.error, error_detail))
    store.finish_run(record, None, error_detail)
    notify(plugins, "harness_run_finished", run=record)
    return record


def _unit(
    kind: str, job: TrainJob | MeasureJob, plugins: Plugins, progress: RunProgress, launcher: str
) -> dict[str, Any]:
    """Run one unit where ``launcher`` says: on Ray (:mod:`harness.ray_executor`) or here (:func:`run_unit`)."""
    if launcher == "ray":
        from harness.ray_executor import run_unit_on_ray
        from harness.shipping import plugin_setup

        return run_unit_on_ray(kind, job, plugin_setup(plugins), progress)
    return run_unit(kind, job, plugins, progress, launcher=launcher)


def _record_training(record: RunRecord, result: dict[str, Any], artifacts: RunArtifacts) -> None:
    """Record the figures of the train unit that wrote ``artifacts``."""
    artifact = artifact_from_json(artifacts.read_json("artifact.json"), artifacts.folder)
    phases = result["phases"]
    seconds = result["seconds"]
    loop = phases.get("train_loop")
    samples = artifact.train_samples
    record.training["trained_in"] = record.run_id
    if result.get("seconds_before_resume"):
        # A unit that resumed on its own (a Ray task retried on another node, from its checkpoint in storage)
        # says so as one resumed by this process would.
        resumed = record.training.setdefault("resumed", {"run": record.run_id})
        resumed.setdefault("from", artifact.info.get("resumed_from_checkpoint"))
        resumed["seconds_before_kill"] = result["seconds_before_resume"]
    record.speed.update(
        train_seconds=seconds,
        train_phases=phases,
        train_samples=samples,
        train_samples_per_s=samples / seconds if samples and seconds > 0 else None,
        train_loop_samples_per_s=samples / loop if samples and loop else None,
        train_gpu_hours=seconds / 3600 if artifact.device.startswith("cuda") else None,
    )
    record.memory.update(train_rss_peak_mb=result["rss_peak_mb"], train_gpu_peak_mb=result["gpu_peak_mb"])
    record.model = {
        "parameters": artifact.parameters,
        "model": artifact.model,
        "dtype": artifact.dtype,
        "device": artifact.device,
        "notes": artifact.notes,
        **artifact.info,
    }


def _reuse_training(record: RunRecord, source: RunRecord) -> None:
    """Take the training figures of the run whose trained model this run measures."""
    record.training["trained_in"] = source.training.get("trained_in") or source.run_id
    changes = what_changed(source.measurement.get("identity", {}), record.measurement["identity"])
    record.training["reason"] = "re-measured" + (f": {', '.join(changes)}" if changes else "")
    record.speed.update({k: v for k, v in source.speed.items() if k.startswith("train_")})
    record.memory.update({k: v for k, v in source.memory.items() if k.startswith("train_")})
    serving_notes = source.serving.get("run_notes") or []  # the source's own measurement's, not the model's
    record.model = {**source.model, "notes": [n for n in source.model.get("notes") or [] if n not in serving_notes]}
    record.train_log = list(source.train_log)
    if source.training.get("resumed"):  # the note travels with the model wherever it is measured again
        record.training["resumed"] = dict(source.training["resumed"])


def _measure(
    plugins: Plugins, job: MeasureJob, progress: RunProgress, record: RunRecord, options: CompareOptions
) -> dict[str, Any]:
    """Measure in a unit of its own; record the serving figures (the predictions are in the job's file) and return
    the unit's result."""
    result = _unit("measure", job, plugins, progress, options.launcher)
    record.speed.update(result["speed"])
    if result["speed"].get("build_seconds"):
        result["notes"].append(
            f"built what it serves from the trained model in {result['speed']['build_seconds']:.1f} s "
            "(once; later measurements load it)"
        )
    record.memory.update(result["memory"])
    record.serving = result["serving"]
    record.model["truncated_predict"] = result["truncated_predict"]
    record.model["notes"] = [*(record.model.get("notes") or []), *result["notes"]]
    record.serving["run_notes"] = list(result["notes"])  # how this measurement served: not part of the model
    return result


def notify(plugins: Plugins, hook: str, **kwargs: Any) -> None:
    """Call an event hook; a listener that raises costs one warning line, never a run."""
    try:
        getattr(plugins.pm.hook, hook)(**kwargs)
    except Exception as exc:
        print(f"harness: a {hook} listener failed: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)


SECRET = "<secret>"  # what a record holds for a setting marked secret


def _hide(text: str | None, secrets: list[str]) -> str | None:
    """An error message or traceback with every secret's value replaced: an approach's exception may
    quote the key it was given."""
    for value in secrets:
        text = text.replace(value, SECRET) if text else text
    return text


def _rescore(plugins: Plugins, store: Store, record: RunRecord, task: Task) -> None:
    """A reused row scored again from its stored predictions with the scorers installed now, so the table
    never shows metrics of a scorer since changed or added. Predictions stored before they carried their
    gold answers keep the metrics they had."""
    scored = read_scored(store.run_dir(record.run_id) / "predictions.jsonl")
    if scored is not None:
        examples, predictions = scored
        record.metrics = _score(plugins, record.approach, task, examples, predictions)


def _log_until(path: Any, kept: str | None) -> list[dict[str, Any]]:
    """A killed run's training log lines up to what it resumes from: all of them when it had finished
    training, those up to the checkpoint's step (the steps after it are trained, and logged, again), or none.

    A line reaches the file when the parent has read it from the unit, so a kill can lose the last lines
    before a checkpoint the unit had already saved. The Trainer's own history in the checkpoint
    (``trainer_state.json``) has every one: the lines are made from it again by the callback's own rules
    (:class:`harness.hf_trainer.LogLines`)."""
    if kept is None or not path.is_file():
        return []
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not kept.startswith("checkpoint-"):
        return entries
    step = int(kept.removeprefix("checkpoint-"))
    entries = [entry for entry in entries if entry.get("step", 0) <= step]
    rebuilt = log_lines_until(path.parent / "artifact" / "checkpoints" / kept / "trainer_state.json", step)
    return entries if rebuilt is None else rebuilt


def _score(
    plugins: Plugins, name: str, task: Task, examples: list[Example], predictions: list[Prediction]
) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for result in reversed(
        plugins.pm.hook.harness_score(task=task, examples=examples, predictions=predictions, approach=name)
    ):
        if result:
            merged.update(result)
    return merged
