"""Loading a trained model to serve it: the approach's load, through a load cache whose build is timed apart.

A load that derives something from the trained model (an export, a merge, a compile) writes it in the load cache,
a directory per trained model and way of serving it; that build is timed on its own, once, and every measurement
times a cold load of what serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from harness import identity, measure
from harness.processes import child_processes, stop_processes
from harness.store import Store
from harness.types import Artifact, Serving, Task


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
            before = child_processes()
            artifact = fresh()
            loaded, seconds = measure.timed(
                lambda: load_for_serving(plugins, name, task, artifact, settings, cache_dir)
            )
            if not any(cache_dir.iterdir()):  # nothing derived: that was the load
                return artifact, loaded, seconds, None
            (cache_dir / BUILT).write_text(f"{seconds}\n", encoding="utf-8")
            build_seconds = seconds
            del artifact, loaded
            # What the build's load started (an engine's workers) holds no memory now.
            stop_processes(child_processes() - before)
            measure.release_memory()
    artifact = fresh()
    loaded, seconds = measure.timed(lambda: load_for_serving(plugins, name, task, artifact, settings, cache_dir))
    return artifact, loaded, seconds, build_seconds


def load_cache_dir(store: Store, train_key: str, serving: dict[str, Any]) -> Path:
    """``harness_load``'s own directory for one trained model (its training identity) served one way: the
    approach that serves, its predict settings but the batch size, its code and library versions, as
    :func:`harness.run_identity.serving_identity` gives them (the measurement identity holds them too)."""
    settings = {k: v for k, v in serving["predict_settings"].items() if k != "predict_batch_size"}
    key = identity.digest([serving["approach"], settings, serving["code"], serving["versions"]])
    return store.root / "cache" / train_key[:16] / f"{serving['approach']}-{key[:12]}"
