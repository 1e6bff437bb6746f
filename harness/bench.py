"""``harness bench``: serving-style numbers for one approach, through the same measuring code as compare.

- throughput at several batch sizes (the whole sample, after a warm-up call; median of ``rounds``);
- batch-1 latency p50/p95/p99 (:func:`harness.measure.batch1_latency`, as compare uses);
- requests/s at a given concurrency: ``concurrency`` clients each send one request at a time and wait
  for its answer (a closed loop); a server thread batches whatever has arrived, up to ``max_batch``
  requests or until the oldest has waited ``max_wait_ms``, the way a dynamic-batching service would see
  them. Requests that queued while the previous batch ran have waited already: they go at once. The
  median of ``rounds`` rounds, beside offline throughput at the same maximum batch.
Peak RSS and peak GPU memory are recorded beside every figure, each path's own (:func:`own_memory`).
"""

from __future__ import annotations

import functools
import queue
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from harness import measure
from harness.stats_intervals import percentile
from harness.types import Example, Prediction

Predict = Callable[[list[Example], dict[str, Any]], list[Prediction]]

# What the raw row runs (:func:`raw_predict` over the reference): the harness's predict may sort texts by length
# or pack them, so its throughput "× raw" counts what that batching saves as well as what its own code costs.
RAW_PROTOCOL = "file order, each batch padded to its longest text (no length bucketing, no packing)"


@dataclass
class BenchResult:
    approach: str
    spec: str
    source: str  # "random weights" or the run id
    n_examples: int
    throughput: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)
    served: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    # The same model called directly (harness_reference), measured the same way in the same run:
    # {"throughput": [...], "latency": {...}}; empty when the approach has no reference.
    raw: dict[str, Any] = field(default_factory=dict)
    raw_protocol: str | None = None  # how raw batches the texts (RAW_PROTOCOL), where there is a raw row


# What `harness bench` without --run adds to the settings of the approach that trains, beside no examples.
UNTRAINED = {"random_weights": True, "num_train_epochs": 0.0}


def untrained(plugins: Any, plan: Any, task: Any, scratch: Path) -> tuple[Any, dict[str, Any]]:
    """The model `harness bench --random-weights` times: the approach that trains (an engine's served one)
    called with no train or validation examples and :data:`UNTRAINED` on top of its settings, so that it
    builds its model from its config, untrained, under ``scratch``; then loaded to serve. Returns the
    artifact and the settings predict gets. The conformance kit calls this too."""
    return trained(plugins, plan, task, scratch, [], [], UNTRAINED)


def trained(
    plugins: Any, plan: Any, task: Any, scratch: Path, train: list[Any], validation: list[Any], extra: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The approach that trains, trained on ``train`` with ``extra`` on top of both its settings and the
    approach's, under ``scratch``, then loaded to serve (its load cache in ``scratch/cache``): the artifact and
    the settings predict gets."""
    from harness.load_cache import load_for_serving
    from harness.progress import SILENT

    trainer = plugins.configured(plan.trainer, {**plan.train_settings, **extra}, workdir=scratch, progress=SILENT)
    artifact = trainer.train(task, train, validation)
    (scratch / "cache").mkdir()
    _, settings = load_for_serving(
        plugins, plan.approach, task, artifact, {**plan.settings, **extra}, scratch / "cache"
    )
    return artifact, settings


def raw_predict(forward: Callable[[list[str]], Any]) -> Predict:
    """A reference ``forward(texts)`` as a Predict: consecutive chunks of ``predict_batch_size`` texts, in
    the order given, so that :func:`batch_throughput` and :func:`latency_rows` time it exactly as predict."""

    def predict(examples: list[Example], settings: dict[str, Any]) -> list[Prediction]:
        size = settings["predict_batch_size"]
        for start in range(0, len(examples), size):
            forward([example.text for example in examples[start : start + size]])
        return []

    return predict


@contextmanager
def own_memory() -> Iterator[dict[str, float | None]]:
    """One path's own peak memory over the calls made in the block, filled into the yielded dict on exit.

    RSS peaks are high-water marks of the whole process: what an earlier call freed but the allocator kept
    would count again, or hide what this call needs. So freed memory goes back to the OS first
    (:func:`harness.measure.release_memory`), then :class:`harness.measure.PeakMemory` records the block.
    ``rss_peak_mb`` and ``gpu_peak_mb`` (None off CUDA) include the loaded model and runtime the process
    holds; ``rss_added_mb`` is the RSS peak over the start, ``gpu_added_mb`` torch's allocations at their
    peak over those at the start: what the block's calls needed."""
    measure.release_memory()
    with measure.PeakMemory() as start:  # an empty block: the same instrument's reading of the start
        pass
    gpu_start = _cuda_allocated_mb() if measure.on_gpu() else 0.0
    figures: dict[str, float | None] = {}
    with measure.PeakMemory() as memory:  # resets torch's peak, so _cuda_allocated_mb(peak=True) is the block's
        yield figures
    figures.update(
        rss_peak_mb=memory.rss_peak_mb,
        rss_added_mb=max(0.0, memory.rss_peak_mb - start.rss_peak_mb),
        gpu_peak_mb=memory.gpu_peak_mb,
        gpu_added_mb=None if memory.gpu_peak_mb is None else max(0.0, _cuda_allocated_mb(peak=True) - gpu_start),
    )


def _cuda_allocated_mb(peak: bool = False) -> float:
    cuda = sys.modules["torch"].cuda  # on_gpu(): the approach imported torch
    return (cuda.max_memory_allocated() if peak else cuda.memory_allocated()) / 2**20


def batch_throughput(
    predicts: list[Predict], examples: list[Example], settings: dict[str, Any], batch_size: int, rounds: int
) -> list[dict[str, Any]]:
    """Samples/s of each predict over ``examples`` at one batch size: a warm-up call each, then ``rounds``
    timed calls each, the predicts taking turns round by round so that a noisy machine moves them alike;
    the median round of each. Then one more call each, alone and untimed, for its own peak memory
    (:func:`own_memory`): taking turns, one process's peaks would mix them."""
    sized = {**settings, "predict_batch_size": batch_size}
    seconds: list[list[float]] = [[] for _ in predicts]
    for predict in predicts:
        predict(examples[: 2 * batch_size], sized)
    for _ in range(rounds):
        for predict, times in zip(predicts, seconds):
            times.append(measure.timed(functools.partial(predict, examples, sized))[1])
    rows = []
    for predict, times in zip(predicts, seconds):
        with own_memory() as memory:
            predict(examples, sized)
        median = statistics.median(times)
        rows.append(
            {
                "batch_size": batch_size,
                "samples_per_s": len(examples) / median,
                "median_s": median,
                "rounds": rounds,
                **memory,
            }
        )
    return rows


def served_requests(
    predict: Predict,
    examples: list[Example],
    settings: dict[str, Any],
    *,
    concurrency: int,
    requests: int,
    max_batch: int,
    max_wait_ms: float,
    rounds: int = 1,
) -> dict[str, Any]:
    """Requests/s and latency with ``concurrency`` closed-loop clients and a dynamic-batching server: the
    median requests/s of ``rounds`` rounds of ``requests`` each, latency percentiles over all of them.

    Each round follows an offline pass over ``examples`` at ``max_batch``, so that ``of_offline``, the
    median of the rounds' served/offline ratios, compares figures a noisy machine moved alike."""
    sized = {**settings, "predict_batch_size": max_batch}
    rates: list[float] = []
    offline: list[float] = []
    latencies: list[float] = []
    batch_sizes: list[int] = []
    with own_memory() as memory:  # the warm-up inside, so that nothing released must come back in a timed round
        predict(examples[:max_batch], sized)  # warm-up
        for _ in range(rounds):
            offline.append(len(examples) / measure.timed(lambda: predict(examples, sized))[1])
            wall = _served_round(
                predict, examples, sized, concurrency, requests, max_batch, max_wait_ms / 1000, latencies, batch_sizes
            )
            rates.append(requests / wall)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "rounds": rounds,
        "requests_per_s": statistics.median(rates),
        "rounds_requests_per_s": rates,
        "offline_samples_per_s": statistics.median(offline),
        "rounds_offline_samples_per_s": offline,
        "of_offline": statistics.median(r / o for r, o in zip(rates, offline)),
        "latency_p50_ms": statistics.median(latencies),
        "latency_p95_ms": percentile(latencies, 95),
        "latency_p99_ms": percentile(latencies, 99),
        "mean_batch": statistics.mean(batch_sizes),
        **memory,
    }


def _served_round(
    predict: Predict,
    examples: list[Example],
    sized: dict[str, Any],
    concurrency: int,
    requests: int,
    max_batch: int,
    max_wait: float,
    latencies: list[float],
    batch_sizes: list[int],
) -> float:
    """One closed-loop round; appends each request's latency (ms) and each batch's size; returns its wall time."""
    inbox: queue.Queue = queue.Queue()
    next_index = iter(range(requests))
    lock = threading.Lock()
    stop = object()
    failures: list[BaseException] = []

    def server() -> None:
        while True:
            first = inbox.get()
            if first is stop:
                return
            batch = [first]
            # The oldest request's own deadline: one that queued while the last batch ran goes at once,
            # with whatever queued beside it.
            deadline = first[2] + max_wait
            while len(batch) < max_batch:
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:
                        item = inbox.get(timeout=remaining)
                    except queue.Empty:
                        break
                if item is stop:
                    inbox.put(stop)
                    break
                batch.append(item)
            try:
                predict([example for example, _, _ in batch], sized)
                measure.cuda_sync()
            except BaseException as exc:  # clients must not wait for ever on a failed batch
                failures.append(exc)
            finally:
                batch_sizes.append(len(batch))
                for _, done, _ in batch:
                    done.set()

    def client() -> None:
        done = threading.Event()
        while not failures:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            done.clear()
            start = time.perf_counter()
            inbox.put((examples[index % len(examples)], done, start))
            done.wait()
            latencies.append((time.perf_counter() - start) * 1000)  # list.append is atomic

    serving = threading.Thread(target=server, daemon=True)
    clients = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    serving.start()
    start = time.perf_counter()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    wall = time.perf_counter() - start
    inbox.put(stop)
    serving.join()
    if failures:
        raise failures[0]
    return wall


def bench_table(result: BenchResult):
    from rich.table import Table

    def mem(row: dict[str, Any]) -> str:
        gpu = row.get("gpu_peak_mb")
        return f"{row['rss_peak_mb']:,.0f} MB (+{row['rss_added_mb']:,.0f})" + (
            f" / GPU {gpu:,.0f} MB (+{row['gpu_added_mb']:,.0f})" if gpu is not None else ""
        )

    table = Table(
        title=f"{result.approach} on {result.spec} ({result.source}, {result.n_examples} examples)",
        title_justify="left",
    )
    rates = "Samples or req/s" + (" (× raw: file order, padded)" if result.raw else "")
    for column in ("Measure", "Setting", rates, "p50 ms", "p95 ms", "p99 ms", "Peak memory (+added)"):
        table.add_column(column, justify="left" if column in ("Measure", "Setting") else "right")
    raw_rates = {row["batch_size"]: row["samples_per_s"] for row in result.raw.get("throughput", [])}

    def versus(value: float, reference: float | None) -> str:
        return "" if not reference else f" ({value / reference:.2f}× raw)"

    for row in result.raw.get("throughput", []):
        table.add_row(
            "[dim]raw[/]",
            f"batch {row['batch_size']}, file order, padded: tokenizer + forward",
            f"{row['samples_per_s']:,.1f}",
            "-",
            "-",
            "-",
            mem(row),
        )
    for row in result.throughput:
        table.add_row(
            "throughput",
            f"batch {row['batch_size']}",
            f"{row['samples_per_s']:,.1f}{versus(row['samples_per_s'], raw_rates.get(row['batch_size']))}",
            "-",
            "-",
            "-",
            mem(row),
        )
    raw_latency = result.raw.get("latency")
    if raw_latency:
        table.add_row(
            "[dim]raw[/]",
            "batch 1, tokenizer + forward",
            f"{raw_latency['requests_per_s']:,.1f}",
            f"{raw_latency['latency_p50_ms']:.1f}",
            f"{raw_latency['latency_p95_ms']:.1f}",
            f"{raw_latency['latency_p99_ms']:.1f}",
            mem(raw_latency),
        )
    lat = result.latency
    table.add_row(
        "latency",
        "batch 1, one client",
        f"{lat['requests_per_s']:,.1f}",
        f"{lat['latency_p50_ms']:.1f}{versus(lat['latency_p50_ms'], (raw_latency or {}).get('latency_p50_ms'))}",
        f"{lat['latency_p95_ms']:.1f}",
        f"{lat['latency_p99_ms']:.1f}",
        mem(lat),
    )
    s = result.served
    offline = f" ({s['of_offline']:.2f}× offline)" if s.get("of_offline") else ""
    table.add_row(
        "served",
        f"{s['concurrency']} clients, batch ≤{s['max_batch']}, wait ≤{s['max_wait_ms']:g} ms "
        f"(mean batch {s['mean_batch']:.1f})",
        f"{s['requests_per_s']:,.1f}{offline}",
        f"{s['latency_p50_ms']:.1f}",
        f"{s['latency_p95_ms']:.1f}",
        f"{s['latency_p99_ms']:.1f}",
        mem(s),
    )
    notes = [f"device: {result.environment.get('device', '')}"]
    if s.get("of_offline"):
        notes.append(
            f"served: median of {s['rounds']} rounds, each after an offline pass at batch {s['max_batch']} "
            f"({s['offline_samples_per_s']:,.1f} samples/s); × offline: the median of the rounds' ratios"
        )
    if result.raw:
        notes.append(
            f"raw: the same loaded model called directly (the approach's harness_reference: tokenizer and "
            f"forward), {result.raw_protocol}, timed the same way in the same run; throughput × raw also "
            "counts what predict's own batching saves (length bucketing, packing), not only its overhead; "
            "at batch 1 both do the same work"
        )
    notes.append(
        "peak memory: each row's path alone, after freed memory went back to the OS; (+added): what its "
        "calls added to the process, which held the loaded model before them"
    )
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


def latency_rows(
    predicts: list[Predict], examples: list[Example], settings: dict[str, Any], samples: int
) -> list[dict[str, Any]]:
    """Batch-1 latency of each predict on the same sampled requests (as compare samples them), interleaved
    request by request (:func:`harness.measure.interleaved_batch1_latency`), so their ratio is one run's.
    Then the same requests again through each predict, alone and untimed, for its own peak memory."""
    items = measure.latency_sample(examples, samples)
    latencies = measure.interleaved_batch1_latency([_one_at_a_time(predict, settings) for predict in predicts], items)
    rows = []
    for predict, latency in zip(predicts, latencies):
        with own_memory() as memory:
            for item in items:
                predict([item], settings)
        rows.append({**latency.summary(), **memory})
    return rows


def _one_at_a_time(predict: Predict, settings: dict[str, Any]) -> Callable[[Example], list[Prediction]]:
    """``predict`` of a single example, as batch-1 latency calls it."""
    return lambda example: predict([example], settings)
