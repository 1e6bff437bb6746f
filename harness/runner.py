"""The comparison runner: for each approach, train -> measure -> score, each unit in its own process.

For each approach the runner computes two identities (harness.identity): a stored row with the same
measurement identity is reused whole; else a stored model with the same training identity is measured
again without training; else the approach trains. Training and measuring run through
:mod:`harness.launch`; the parent scores, stores and reports.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from harness import identity, measure
from harness.data_cache import data_cache_file, write_data_cache
from harness.data_load import Datasets, data_checks
from harness.errors import UserError
from harness.files import write_text
from harness.hf_trainer import LogLines
from harness.launch import LAUNCHERS, UnitFailed, run_unit
from harness.plugins import Plugins
from harness.progress import RunProgress
from harness.settings import resolve_settings
from harness.spec import Spec
from harness.store import Store
from harness.store.comparisons import shown_as
from harness.store.records import load_artifact, read_predictions, read_scored
from harness.store.resume import resumable
from harness.types import ApproachInfo, Comparison, Example, Prediction, RunRecord, Task
from harness.units import TRAIN_RESULT, MeasureJob, TrainJob

__all__ = ["CompareOptions", "Plan", "compare", "plan_settings", "run_approach"]


@dataclass
class CompareOptions:
    random_weights: bool = False
    rerun: bool = False
    latency_samples: int = 100
    warmup_examples: int = 64
    launcher: str = "process"  # or "inline": every unit in this process, for debugging
    seeds: list[int] | None = None  # --seeds: instead of the spec's seeds (or its seed)
    teacher: dict[str, Any] | None = None  # what harness.teacher did to the training data, for every record
    parallel: int = 1  # runs at once (harness grid on Ray); 1: one after another


@dataclass
class Plan:
    """One row of a comparison, settled before anything runs.

    ``approach`` predicts; ``trainer`` trains: the approach itself, or the approach an engine serves.
    ``settings`` go to load and predict (the trainer's, with an engine's own on top); ``train_settings``
    go to train. ``predict_keys`` are the settings that change only how predict runs.
    """

    approach: str
    trainer: str
    settings: dict[str, Any]
    train_settings: dict[str, Any]
    predict_keys: tuple[str, ...] = ()
    train_predict_keys: tuple[str, ...] = ()  # the trainer's own predict settings: not part of what it trains
    model_settings: tuple[str, ...] = ()
    info: ApproachInfo | None = field(default=None, repr=False)
    secrets: tuple[str, ...] = ()  # settings never written to a record, a log or an error message
    # The row's name in the table (``approach`` unless the spec's plugins.<row>.approach names another),
    # and the row whose prompt the model is trained and asked with (the served row, for an engine).
    row: str = ""
    prompt_row: str = ""

    @property
    def name(self) -> str:
        return self.row or self.approach


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(prefix: str) -> str:
    """A run or comparison id: time, the name (a grid row's ``bert@learning_rate=1e-5`` as ``bert.learning_rate.1e-5``:
    the characters a path and a run id take), a random suffix."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", ".", prefix).strip(".") or "run"
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{safe}-{secrets.token_hex(3)}"


def _describe(plugins: Plugins, name: str) -> ApproachInfo:
    try:
        return plugins.describe(name)
    except Exception as exc:  # a plugin bug, but the user needs to know which plugin
        raise UserError(
            f"plugin {name!r} cannot describe itself: {type(exc).__name__}: {exc}".splitlines()[0], where="--plugins"
        ) from None


def plan_settings(
    plugins: Plugins, spec: Spec, approaches: list[str], overrides: dict[str, dict[str, str]]
) -> dict[str, Plan]:
    """Validate every selected approach's settings and task support before anything runs.

    An engine (``ApproachInfo.serves``) is planned over the approach it serves, whose settings come from the
    spec's and ``--set``'s entries for that approach.
    """
    plugins.require([spec.approach_of(name) for name in approaches])
    infos = {name: _describe(plugins, spec.approach_of(name)) for name in approaches}
    served = {info.serves for info in infos.values() if info.serves}
    for name in sorted(served):
        if not plugins.implements(spec.approach_of(name), "train"):
            engine = next(n for n, i in infos.items() if i.serves == name)
            raise UserError(
                f"plugin {engine!r} serves {name!r}, which is not an installed approach that trains", where="--plugins"
            )
        infos.setdefault(name, _describe(plugins, spec.approach_of(name)))
    unknown = sorted(set(overrides) - set(approaches) - served - {spec.approach_of(name) for name in approaches})
    if unknown:
        raise UserError(f"{unknown[0]!r} is not among --plugins ({', '.join(approaches)})", where="--set")

    def resolved(name: str) -> dict[str, Any]:
        info = infos[name]
        if spec.task.type not in info.task_types:
            raise UserError(
                f"plugin {name!r} does not support {spec.task.type} (it supports {', '.join(info.task_types)})",
                where=spec.where,
            )
        # A row of another approach (plugins.<row>.approach) takes that approach's --set values, then its own.
        base = spec.approach_of(name)
        return resolve_settings(
            name,
            plugins.settings_class(base),
            spec,
            overrides.get(name, {}),
            base_overrides=overrides.get(base, {}) if base != name else None,
        )

    plans = {}
    for name in approaches:
        info = infos[name]
        trainer = info.serves or name
        train_settings = resolved(trainer)
        trainer_info = infos[trainer]
        if info.serves:
            own = resolved(name)
            # A setting the engine shares with what it serves (bert-onnx's max_length) takes the trained run's
            # value unless the engine's own section or --set names it.
            named = {
                *(spec.plugins.get(name) or {}),
                *(spec.plugins.get(spec.approach_of(name)) or {}),
                *overrides.get(name, {}),
                *overrides.get(spec.approach_of(name), {}),
            }
            own = {k: v for k, v in own.items() if k not in train_settings or k in named}
            settings = {**train_settings, **own}
            predict_keys = (*trainer_info.predict_settings, *info.settings)
        else:
            settings, predict_keys = train_settings, info.predict_settings
        # Every hook call gets the run's seed as settings["seed"] (the first seed here; run_approach sets its own).
        seed = {"seed": spec.training_seeds[0]}
        settings, train_settings = {**settings, **seed}, {**train_settings, **seed}
        plans[name] = Plan(
            spec.approach_of(name),
            spec.approach_of(trainer),
            settings,
            train_settings,
            tuple(dict.fromkeys(predict_keys)),
            tuple(trainer_info.predict_settings),
            trainer_info.model_settings,
            info,
            tuple({*info.secret_settings, *trainer_info.secret_settings}),
            row=name,
            prompt_row=trainer,
        )
    return plans


def compare(
    plugins: Plugins,
    spec: Spec,
    data: Datasets,
    plans: dict[str, Plan],
    store: Store,
    options: CompareOptions,
    console: Any = None,
) -> Comparison:
    """Run every planned approach (from :func:`plan_settings`) in order; failures become failed rows."""
    if options.launcher not in LAUNCHERS:
        raise UserError(f"expected one of {', '.join(LAUNCHERS)}, got {options.launcher!r}", where="--launcher")
    check_approaches(plugins, spec, plans)
    comparison = Comparison(
        comparison_id=new_id(spec.name), spec=spec.name, created=now(), runs=[], metrics=spec.metrics
    )
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


def _unit(
    kind: str, job: TrainJob | MeasureJob, plugins: Plugins, progress: RunProgress, launcher: str
) -> dict[str, Any]:
    """Run one unit where ``launcher`` says: on Ray (:mod:`harness.ray_executor`) or here (:func:`run_unit`)."""
    if launcher == "ray":
        from harness.ray_executor import run_unit_on_ray
        from harness.shipping import plugin_setup

        return run_unit_on_ray(kind, job, plugin_setup(plugins), progress)
    return run_unit(kind, job, plugins, progress, launcher=launcher)


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


def training_identity(
    plugins: Plugins, spec: Spec, data: Datasets, plan: Plan, task: Task, options: CompareOptions, store: Store
) -> dict[str, Any]:
    """What was trained: see harness.identity."""
    # Secrets (API keys) change no weights and never reach a record: they are not part of the identity.
    from harness.redaction import redact_settings

    settings = redact_settings(
        {k: v for k, v in plan.train_settings.items() if k not in plan.train_predict_keys and k not in plan.secrets},
        store.secret_mark,
    )
    with store.model_hashes() as cache:
        models = {
            key: identity.model_identity(str(settings[key]), cache) for key in plan.model_settings if settings.get(key)
        }
    return {
        "approach": plan.trainer,
        "settings": settings,
        "random_weights": options.random_weights,
        "models": models,
        "task": {k: v for k, v in asdict(task).items() if k != "normalize"},  # normalize only changes scoring
        "train": data.train_hash,
        "validation": data.validation_hash,
        "validation_source": data.validation_source,
        "seed": plan.train_settings["seed"],
        "code": identity.training_code(plugins.code_roots(plan.trainer, ("train",))),
        "versions": identity.library_versions(identity.TRAINING_LIBRARIES),
        "accelerator": identity.training_device(settings.get("train_device")),
        # On a CPU with bf16 units decoders train under bf16 autocast (mixed_precision: auto): not the same run.
        "cpu_bf16": identity.cpu_bf16(),
    }


def measurement_identity(
    plugins: Plugins, data: Datasets, plan: Plan, train_key: str, options: CompareOptions, store: Store
) -> dict[str, Any]:
    """How it was measured: see harness.identity."""
    from harness.redaction import redact_settings

    return {
        "train_key": train_key,
        "approach": plan.approach,
        # An engine's env values and the value after --api-key in its arguments never reach a record.
        "predict_settings": redact_settings(
            {k: plan.settings[k] for k in plan.predict_keys if k in plan.settings and k not in plan.secrets},
            store.secret_mark,
        ),
        "test": data.test_hash,
        "latency_samples": options.latency_samples,
        "warmup_examples": options.warmup_examples,
        "machine": measure.machine(),
        "gpu": identity.gpu_name(),
        "threads": measure.unit_threads(),
        "launcher": options.launcher,
        "code": identity.measuring_code(plugins.code_roots(plan.approach, ("load", "predict", "parity"))),
        "versions": identity.library_versions(identity.SERVING_LIBRARIES),
    }


def what_changed(before: dict[str, Any], after: dict[str, Any], training: bool = False) -> list[str]:
    """Two measurement identities' differences (two training identities', with ``training``), in words:
    ``predict_batch_size 0 -> 8``, ``test data``, ``training code: plugins.toy.Toy._fit``."""
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new or key == "train_key":
            continue
        if key in ("predict_settings", "settings"):
            for name in sorted(set(old or {}) | set(new or {})):
                if (old or {}).get(name) != (new or {}).get(name):
                    changes.append(f"{name} {(old or {}).get(name)!r} -> {(new or {}).get(name)!r}")
        elif key == "approach" and not training:  # another approach serves it: every other difference follows from that
            return [f"served by {new} (trained by {before.get('approach')})"]
        elif key == "code":
            edited = sorted(
                name for name in set(old or {}) | set(new or {}) if (old or {}).get(name) != (new or {}).get(name)
            )
            changes.append(
                f"{'training' if training else 'measuring'} code: "
                + ", ".join(edited[:3])
                + (f" and {len(edited) - 3} more" if len(edited) > 3 else "")
            )
        elif key in (
            "latency_samples",
            "warmup_examples",
            "threads",
            "launcher",
            "approach",
            "random_weights",
            "accelerator",
        ):
            changes.append(f"{key} {old} -> {new}")
        elif key in ("test", "train", "validation"):
            changes.append(f"{key} data")
        else:
            changes.append(key)
    return changes


def training_reason(store: Store, record: RunRecord, rerun: bool) -> str:
    """Why a row trains: ``--rerun``, or what changed in its training identity since the newest model the
    same row trained with the same seed on the same spec (``training code: plugins.toy.Toy._fit``)."""
    if rerun:
        return "--rerun"
    for run_id in store.trained_runs(record.approach, record.spec):
        try:
            before = store.load_run(run_id)
        except UserError:
            continue
        if before.seed == record.seed and before.training.get("identity"):
            now = json.loads(json.dumps(record.training["identity"], default=str))  # as stored: tuples are lists
            changes = what_changed(before.training["identity"], now, training=True)
            return ", ".join(changes) or f"the model run {run_id} trained is no longer stored"
    return "no model of this row stored yet"


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
        training = training_identity(plugins, spec, data, plan, task, options, store)
        train_key = identity.digest(training)
        measurement = measurement_identity(plugins, data, plan, train_key, options, store)
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
        return _run_locked(plugins, spec, data, plan, store, options, console, record, task, seed)


def _run_locked(
    plugins: Plugins,
    spec: Spec,
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
        kept = resumable(workdir)
        record.training["resumed"] = {"run": record.run_id, "from": kept}
        record.train_log = _log_until(workdir / "train_log.jsonl", kept)
        log_file = workdir / "train_log.jsonl"
        write_text(log_file, "".join(json.dumps(entry, default=str) + "\n" for entry in record.train_log))
    else:
        workdir = store.start_run(record.run_id, {"train_key": train_key, "measure_key": record.measurement["key"]})
        log_file = workdir / "train_log.jsonl"
    notify(plugins, "harness_run_started", run=record)

    def on_log(entry: dict[str, Any]) -> None:
        record.train_log.append(entry)
        with log_file.open("a", encoding="utf-8") as handle:  # on disk as it is written: a kill loses no line
            handle.write(json.dumps(entry, default=str) + "\n")
        notify(plugins, "harness_training_log", run=record, entry=entry)

    progress = RunProgress(console, on_log)
    error_detail = None
    try:
        cache_dir = load_cache(store, train_key, record.measurement["identity"])
        # Held from cleanup before they are used (until the compare ends); then the data cache is written if
        # missing, also if a cleanup had just removed it.
        store.hold(workdir, data_cache_file(data, store.root / "data"), cache_dir)
        data_file = write_data_cache(data, store.root / "data")
        finished = workdir / "artifact" / TRAIN_RESULT
        if source is not None:
            _reuse_training(record, source)
            artifact_file = store.artifact_file(source.run_id)
        elif finished.is_file():  # a killed run had finished training: measure its model
            artifact_file = _record_training(
                record, json.loads(finished.read_text(encoding="utf-8")), workdir / "artifact"
            )
        else:
            record.training["reason"] = training_reason(store, record, options.rerun)
            job = TrainJob(
                plan.trainer,
                task,
                data_file,
                {**plan.train_settings, "random_weights": options.random_weights},
                workdir / "artifact",
                seed,
            )
            result = _unit("train", job, plugins, progress, options.launcher)
            artifact_file = _record_training(record, result, job.workdir)
        job = MeasureJob(
            plan.approach,
            task,
            data_file,
            {**plan.settings, "random_weights": options.random_weights},
            artifact_file,
            workdir / "predictions.jsonl",
            seed,
            options.latency_samples,
            options.warmup_examples,
            cache_dir,
        )
        _measure(plugins, job, progress, record, options)
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
    record.environment.update(measure.environment(record.serving.get("device") or record.model.get("device")))
    hidden = [str(plan.settings[k]) for k in plan.secrets if len(str(plan.settings.get(k) or "")) >= 4]
    record.error, error_detail = (_hide(text, hidden) for text in (record.error, error_detail))
    store.finish_run(record, None, error_detail)
    notify(plugins, "harness_run_finished", run=record)
    return record


def _record_training(record: RunRecord, result: dict[str, Any], workdir: Any) -> Any:
    """Record the figures of the train unit that wrote ``workdir``; return its artifact file."""
    artifact_file = workdir / "artifact.json"
    artifact = load_artifact(artifact_file)
    phases = result["phases"]
    seconds = result["seconds"]
    loop = phases.get("train_loop")
    samples = artifact.train_samples
    record.training["trained_in"] = record.run_id
    if result.get("seconds_before_resume"):
        record.training.setdefault("resumed", {})["seconds_before_kill"] = result["seconds_before_resume"]
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
    return artifact_file


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
) -> None:
    """Measure in a unit of its own; record the serving figures (the predictions are in the job's file)."""
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


def load_cache(store: Store, train_key: str, measurement: dict[str, Any]) -> Any:
    """``harness_load``'s own directory for one trained model (its training identity) served one way: the
    approach that serves, its predict settings but the batch size, its code and library versions."""
    serving = {k: v for k, v in measurement["predict_settings"].items() if k != "predict_batch_size"}
    key = identity.digest([measurement["approach"], serving, measurement["code"], measurement["versions"]])
    return store.root / "cache" / train_key[:16] / f"{measurement['approach']}-{key[:12]}"


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
    state_file = path.parent / "artifact" / "checkpoints" / kept / "trainer_state.json"
    try:
        history = json.loads(state_file.read_text(encoding="utf-8")).get("log_history") or []
    except (OSError, ValueError):
        return entries

    lines = LogLines()  # the callback's own rules, replayed
    rebuilt = (
        lines.line(item["step"], item.get("epoch"), {k: v for k, v in item.items() if k != "step"})
        for item in history
        if item.get("step", 0) <= step
    )
    return [entry for entry in rebuilt if entry is not None]


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
