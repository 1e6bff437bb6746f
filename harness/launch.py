"""Training and measuring, each in a process of its own.

A run is two units of work: **train** (the approach's train hook; writes the artifact and its
``artifact.json``) and **measure** (load the stored artifact, warm up, predict the test set, sample
batch-1 latency; writes ``predictions.jsonl``). Each unit runs in a fresh process started with
``spawn``, as optimum-benchmark's process launcher does: its memory peaks are its own, the training
weights are gone when the serving model is measured, and a segfault or an out-of-memory kill is a failed
row instead of a lost comparison. A unit is a plain function of a picklable job, so the same unit can
become a Ray task.

The parent keeps the store, the terminal and the event hooks: a unit's training log lines and progress
bars travel back over a queue. Data crosses once, as a cache file named by its hash.

``inline`` runs the units in the calling process, for debugging a plugin with pdb.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import json
import multiprocessing
import pickle
import queue as queue_module
import signal
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from harness import measure
from harness.data_load import Datasets
from harness.progress import Bar, RunProgress
from harness.types import Artifact, Example, Parity, Prediction, Serving, Task

LAUNCHERS = (
    "process",
    "inline",
    "ray",
)  # ray: harness.ray_executor (harness grid --executor ray), chosen by the runner


TRAIN_RESULT = "train_result.json"  # the train unit's figures, written beside artifact.json when it finishes


# What to lower when training runs out of memory, where an approach has them.
TRAIN_MEMORY_SETTINGS = ("per_device_train_batch_size", "max_length")


class OutOfMemory(RuntimeError):
    """Training ran out of accelerator memory: the message names the settings to lower."""


class AnswersFailed(RuntimeError):
    """Most answers of the timed pass failed (an endpoint's requests, after retries): the row has no result to
    speak of, and is a failed row, never stored ``ok`` or reused."""


class UnitFailed(Exception):
    """A unit raised or its process died: ``detail`` holds the traceback or what the process said."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


# ---------------------------------------------------------------------------------------------
# Jobs: everything a unit needs, picklable.
# ---------------------------------------------------------------------------------------------


@dataclass
class PluginSetup:
    """How a unit's process rebuilds the parent's plugins: entry points or not, plus the plugins the parent
    registered by hand, each as an importable module name, a module file, or a pickled object."""

    entry_points: bool = True
    extra: list[tuple[str, str, Any]] = field(default_factory=list)  # (name, kind, value)


@dataclass
class TrainJob:
    approach: str
    task: Task
    data_file: Path
    settings: dict[str, Any]
    workdir: Path
    seed: int


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


def plugin_setup(plugins: Any) -> PluginSetup:
    """Describe ``plugins`` so that another process can build the same set."""
    setup = PluginSetup(entry_points=plugins.entry_points)
    for name, plugin in plugins.registered.items():
        setup.extra.append((name, *_reference(name, plugin)))
    return setup


def _reference(name: str, plugin: Any) -> tuple[str, Any]:
    if isinstance(plugin, ModuleType):
        return _module_reference(name, plugin)
    # An object defined in a module (an engine beside its approach, say): that module, then the attribute.
    import sys

    module = sys.modules.get(type(plugin).__module__)
    attribute = next((key for key, value in vars(module).items() if value is plugin), None) if module else None
    if attribute is not None:
        return "attribute", (_module_reference(name, module), attribute)
    from harness.approach import Approach

    if isinstance(plugin, Approach) and module is not None:  # made again from its class, in its module
        return "instance", (_module_reference(name, module), type(plugin).__qualname__)
    try:
        return "object", pickle.dumps(plugin)
    except Exception as exc:
        raise TypeError(
            f"plugin {name!r} cannot be sent to another process ({type(exc).__name__}: {exc}); "
            "register a module, or use the inline launcher"
        ) from None


def _module_reference(name: str, module: ModuleType) -> tuple[str, Any]:
    import sys

    # Importable by name in a fresh process: a finder knows its top-level package without sys.modules' help.
    top = module.__name__.partition(".")[0]
    if module.__name__ != "__main__" and any(
        finder.find_spec(top, None) is not None for finder in sys.meta_path if hasattr(finder, "find_spec")
    ):
        return "module", module.__name__
    if getattr(module, "__file__", None):
        return "file", (module.__name__, module.__file__)
    raise TypeError(
        f"plugin {name!r} comes from a module built in memory; another process cannot load it: "
        "register a module that has a file, or use the inline launcher"
    )


def _load(kind: str, value: Any) -> Any:
    import sys

    if kind == "module":
        return importlib.import_module(value)
    if kind == "file":
        module_name, path = value
        if module_name in sys.modules:  # its engine and its approach come from one module: load it once
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    if kind in ("attribute", "instance"):
        (module_kind, module_value), attribute = value
        found = getattr(_load(module_kind, module_value), attribute)
        return found() if kind == "instance" else found
    return pickle.loads(value)


def rebuild_plugins(setup: PluginSetup) -> Any:
    from harness.plugins import load_plugins

    plugins = load_plugins(entry_points=setup.entry_points)
    for name, kind, value in setup.extra:
        plugins.register(_load(kind, value), name)
    return plugins


# ---------------------------------------------------------------------------------------------
# The data cache: written once by the parent, read by every unit.
# ---------------------------------------------------------------------------------------------


def data_cache_file(data: Datasets, folder: Path) -> Path:
    """Where :func:`write_data_cache` keeps these datasets: named by their hashes."""
    from harness.identity import digest

    key = digest([data.train_hash, data.validation_hash, data.test_hash, data.validation_source])
    return folder / f"{key[:32]}.json"


def write_data_cache(data: Datasets, folder: Path) -> Path:
    """The datasets as one JSON file named by their hashes; an existing file is the same data."""
    from harness.files import write_json

    path = data_cache_file(data, folder)
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_json(
            path,
            {
                "validation_source": data.validation_source,
                **{split: [asdict(ex) for ex in getattr(data, split)] for split in ("train", "validation", "test")},
            },
        )
    return path


def read_data_cache(path: Path) -> Datasets:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Datasets(
        *([Example(**row) for row in raw[split]] for split in ("train", "validation", "test")),
        validation_source=raw["validation_source"],
    )


# ---------------------------------------------------------------------------------------------
# The units.
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch on every device, as transformers' ``set_seed`` does.

    torch is seeded the moment it is first imported rather than imported here: a unit whose approach
    never uses torch would otherwise carry its 200 MB in the serving memory it reports.
    """
    import random
    import sys

    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)  # seeds every CUDA device too
    elif not any(isinstance(finder, _SeedTorchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SeedTorchOnImport(seed))


class _SeedTorchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the real finder find torch, and seeds it as soon as it is executed.

    It stays in place until torch is really imported: libraries probe with ``importlib.util.find_spec
    ("torch")`` (transformers does, to see whether torch is installed) long before they import it.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch":
            return None
        import sys

        index = sys.meta_path.index(self)
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec("torch")
        finally:
            sys.meta_path.insert(index, self)
        if spec is None or spec.loader is None:
            return spec
        original, finder = spec.loader, self

        class SeedingLoader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return original.create_module(spec)

            def exec_module(self, module: Any) -> None:
                original.exec_module(module)
                module.manual_seed(finder.seed)
                if finder in sys.meta_path:
                    sys.meta_path.remove(finder)

        spec.loader = SeedingLoader()
        return spec


def train_unit(plugins: Any, job: TrainJob, progress: RunProgress) -> dict[str, Any]:
    """Train, save ``artifact.json`` beside the model, and return the training figures."""
    from harness.store import save_artifact, write_json

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
        lower = [f"{key} (now {job.settings[key]})" for key in TRAIN_MEMORY_SETTINGS if job.settings.get(key)]
        raise OutOfMemory(
            "out of accelerator memory while training; lower "
            + (" or ".join(lower) or "the batch size")
            + ", and raise gradient_accumulation_steps to keep the effective batch"
        ) from None
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
    return result


def measure_unit(plugins: Any, job: MeasureJob, progress: RunProgress) -> dict[str, Any]:
    """Load the stored artifact, then time predict on the serving model alone; write the predictions."""
    from harness.store import load_artifact, write_predictions

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
        "serving": {**(asdict(serving) if serving else {}), **({"parity": asdict(parity)} if parity else {})},
        "truncated_predict": sum(1 for p in predictions if p.truncated),
    }


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


def load_for_serving(
    plugins: Any, name: str, task: Task, artifact: Artifact, settings: dict[str, Any], cache_dir: Path | None = None
) -> tuple[Serving | None, dict[str, Any]]:
    """Call the approach's ``load`` where it has one, and return what it reported with the settings
    predict gets: ``predict_batch_size`` filled with the reported batch when the settings ask for none.
    compare's measure unit, ``harness bench``, the pytest fixture and the kit all serve through this."""
    if not plugins.implements(name, "load"):
        return None, dict(settings)
    serving = plugins.configured(name, settings, cache_dir=cache_dir).load(task, artifact)
    if serving is not None and not isinstance(serving, Serving):
        raise TypeError(f"harness_load must return a Serving, got {type(serving).__name__}")
    if serving is not None and serving.batch_size and not settings.get("predict_batch_size"):
        return serving, {**settings, "predict_batch_size": serving.batch_size}
    return serving, dict(settings)


BUILT = ".built"  # in a load cache: what harness_load derived there is complete


def load_cached(
    plugins: Any, name: str, task: Task, fresh: Callable[[], Artifact], settings: dict[str, Any], cache_dir: Path | None
) -> tuple[Artifact, tuple[Serving | None, dict[str, Any]], float, float | None]:
    """Serve ``fresh()`` (the stored artifact, empty state) through :func:`load_for_serving` with the load
    cache ``cache_dir``, one per trained model and serving settings, held against other processes while
    anything is built in it. A load that derives something there (an export, a merge, a compile) is the
    build: it is timed on its own, thrown away, and the model loaded again from the cache, so the load
    time is always a cold load of what serves. Returns the artifact, what the load returned, the load's
    seconds and the build's (None when nothing was built now)."""
    import fcntl
    import shutil

    if cache_dir is None:
        artifact = fresh()
        loaded, seconds = measure.timed(lambda: load_for_serving(plugins, name, task, artifact, settings))
        return artifact, loaded, seconds, None
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_dir.with_name(cache_dir.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds; the others wait, then load what it built
        build_seconds = None
        if not (cache_dir / BUILT).is_file():
            shutil.rmtree(cache_dir, ignore_errors=True)  # a build that was killed half-way
            cache_dir.mkdir()
            before = _children()
            artifact = fresh()
            loaded, seconds = measure.timed(
                lambda: load_for_serving(plugins, name, task, artifact, settings, cache_dir)
            )
            if not any(cache_dir.iterdir()):  # nothing derived: that was the load
                return artifact, loaded, seconds, None
            (cache_dir / BUILT).write_text(f"{seconds}\n", encoding="utf-8")
            build_seconds = seconds
            del artifact, loaded
            _stop(_children() - before)  # what the build's load started (an engine's workers) holds no memory now
            measure.release_memory()
    artifact = fresh()
    loaded, seconds = measure.timed(lambda: load_for_serving(plugins, name, task, artifact, settings, cache_dir))
    return artifact, loaded, seconds, build_seconds


def _children() -> set[Any]:
    import psutil

    return set(psutil.Process().children(recursive=True))


def _stop(processes: set[Any]) -> None:
    import psutil

    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(processes), timeout=5)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass


def without_answers(examples: list[Example]) -> list[Example]:
    """The examples as predict sees them: gold labels and fields removed, so no approach can peek."""
    from dataclasses import replace

    return [replace(ex, label=None, fields=None) for ex in examples]


def check_predictions(predictions: Any, examples: list[Example]) -> None:
    """The predict contract: a list of Prediction, one per example."""
    if not isinstance(predictions, list) or not all(isinstance(p, Prediction) for p in predictions):
        raise TypeError("harness_predict must return a list of Prediction")
    if len(predictions) != len(examples):
        raise ValueError(f"harness_predict returned {len(predictions)} predictions for {len(examples)} examples")


UNITS: dict[str, Callable[[Any, Any, RunProgress], dict[str, Any]]] = {"train": train_unit, "measure": measure_unit}


# ---------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------


def run_unit(kind: str, job: Any, plugins: Any, progress: RunProgress, *, launcher: str = "process") -> dict[str, Any]:
    """Run one unit here (``process``: a process of its own; ``inline``: this one) and return its result; raise
    :class:`UnitFailed` with the reason if it fails or dies. Units on Ray: :mod:`harness.ray_executor`, which
    runs each as this module's process launcher on a worker (the runner picks)."""
    if launcher == "inline":
        before = _children()
        try:
            return UNITS[kind](plugins, job, progress)
        except Exception as exc:
            raise UnitFailed(_one_line(exc), traceback.format_exc()) from None
        finally:
            _stop(_children() - before)  # processes the unit started end with it, as in a unit's own process
    return _in_process(kind, job, plugin_setup(plugins), progress)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


class _RemoteProgress(RunProgress):
    """The unit's side of the progress: bars and log lines become messages to the parent."""

    def __init__(self, messages: Any):
        super().__init__()
        self._messages = messages
        self._bars = 0

    def bar(self, description: str, total: float | None):  # type: ignore[override]
        from contextlib import contextmanager

        @contextmanager
        def remote():
            self._bars += 1
            bar_id = self._bars
            self._messages.put(("bar", bar_id, description, total))
            try:
                yield _RemoteBar(self._messages, bar_id)
            finally:
                self._messages.put(("bar_end", bar_id))

        return remote()

    def log(self, **entry: Any) -> None:
        self._messages.put(("log", entry))


class _RemoteBar(Bar):
    def __init__(self, messages: Any, bar_id: int):
        super().__init__(None, None)
        self._messages, self._bar_id = messages, bar_id

    def advance(self, n: float = 1) -> None:
        self._messages.put(("advance", self._bar_id, n))


def _child(kind: str, job: Any, setup: PluginSetup, messages: Any) -> None:
    import os

    os.setsid()  # a process group of its own: the unit and every process it starts are reaped together
    _exit_with_parent()
    try:
        plugins = rebuild_plugins(setup)
        result = UNITS[kind](plugins, job, _RemoteProgress(messages))
    except BaseException as exc:  # everything the parent must hear about, KeyboardInterrupt included
        messages.put(("error", _one_line(exc), traceback.format_exc()))
    else:
        messages.put(("result", result))
    finally:
        # What the unit started and left running (an engine's workers) stops with it: multiprocessing would
        # otherwise wait at exit for a worker that never ends.
        _stop(_children())


def _exit_with_parent() -> None:
    """A unit whose parent was killed stops too, with every process it started: nothing then writes into a
    run the next compare may resume, and no engine is left holding memory."""
    import os
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.killpg(os.getpgid(0), 9)  # the unit and what it started (an engine's workers): SIGKILL, all at once

    threading.Thread(target=watch, name="harness-parent-watch", daemon=True).start()


def _in_process(kind: str, job: Any, setup: PluginSetup, progress: RunProgress) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    # Not daemonic: a unit may start processes of its own (an engine's core, DataLoader workers, datasets.map).
    process = context.Process(target=_child, args=(kind, job, setup, messages), name=f"harness-{kind}", daemon=False)
    process.start()
    bars: dict[int, tuple[Any, Bar]] = {}
    outcome: tuple[Any, ...] | None = None
    try:
        while outcome is None:
            try:
                message = messages.get(timeout=0.2)
            except queue_module.Empty:
                if not process.is_alive():
                    # It may have put its last words just before dying: read what is left, then judge.
                    try:
                        message = messages.get(timeout=1.0)
                    except queue_module.Empty:
                        break
                else:
                    continue
            outcome = _dispatch(message, progress, bars)
        process.join(timeout=60)  # its last words are in; what does not exit by then is killed below
    finally:
        for manager, _ in bars.values():
            manager.__exit__(None, None, None)
        if process.is_alive():
            process.kill()
            process.join()
        _reap(process.pid)
    if outcome is None:
        raise UnitFailed(_death(process.exitcode, kind))
    if outcome[0] == "error":
        raise UnitFailed(outcome[1], outcome[2])
    return outcome[1]


def _reap(group: int | None) -> None:
    """Kill what is left of a unit's process group: children it started and did not stop, also after it
    finished, failed or was killed."""
    import os

    if group is None:
        return
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left


def _dispatch(
    message: tuple[Any, ...], progress: RunProgress, bars: dict[int, tuple[Any, Bar]]
) -> tuple[Any, ...] | None:
    kind = message[0]
    if kind == "log":
        progress.log(**message[1])
    elif kind == "bar":
        manager = progress.bar(message[2], message[3])
        bars[message[1]] = (manager, manager.__enter__())
    elif kind == "advance":
        if message[1] in bars:
            bars[message[1]][1].advance(message[2])
    elif kind == "bar_end":
        if message[1] in bars:
            bars.pop(message[1])[0].__exit__(None, None, None)
    else:
        return message
    return None


def _death(exitcode: int | None, kind: str) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (killed: out of memory?)" if name == "SIGKILL" else ""
        return f"the {kind} process died of {name}{hint}"
    return f"the {kind} process exited with status {exitcode} without a result"
