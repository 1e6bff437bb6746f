"""``harness bench``: serving-style numbers for one approach, through the same measuring code as compare.

- throughput at several batch sizes (the whole sample, after a warm-up call; median of ``rounds``);
- batch-1 latency p50/p95/p99 (:func:`harness.measure.batch1_latency`, as compare uses);
- requests/s at a given concurrency: ``concurrency`` clients each send one request at a time and wait
  for its answer (a closed loop); a server thread batches whatever has arrived, up to ``max_batch``
  requests or until the oldest has waited ``max_wait_ms``, the way a dynamic-batching service would see
  them. Requests that queued while the previous batch ran have waited already: they go at once. The
  median of ``rounds`` rounds, beside offline throughput at the same maximum batch.
Peak RSS and peak GPU memory are recorded beside every figure.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from harness import measure
from harness.types import Example, Prediction

Predict = Callable[[list[Example], dict[str, Any]], list[Prediction]]


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


def raw_predict(forward: Callable[[list[str]], Any]) -> Predict:
    """A reference ``forward(texts)`` as a Predict: consecutive chunks of ``predict_batch_size`` texts, in
    the order given, so that :func:`batch_throughput` and :func:`latency_rows` time it exactly as predict."""

    def predict(examples: list[Example], settings: dict[str, Any]) -> list[Prediction]:
        size = settings["predict_batch_size"]
        for start in range(0, len(examples), size):
            forward([example.text for example in examples[start : start + size]])
        return []

    return predict


def batch_throughput(predicts: list[Predict], examples: list[Example], settings: dict[str, Any], batch_size: int,
                     rounds: int) -> list[dict[str, Any]]:
    """Samples/s of each predict over ``examples`` at one batch size: a warm-up call each, then ``rounds``
    timed calls each, the predicts taking turns round by round so that a noisy machine moves them alike;
    the median round of each."""
    sized = {**settings, "predict_batch_size": batch_size}
    seconds: list[list[float]] = [[] for _ in predicts]
    with measure.PeakMemory() as memory:
        for predict in predicts:
            predict(examples[: 2 * batch_size], sized)
        for _ in range(rounds):
            for predict, times in zip(predicts, seconds):
                times.append(measure.timed(lambda: predict(examples, sized))[1])
    rows = []
    for times in seconds:
        median = statistics.median(times)
        rows.append({"batch_size": batch_size, "samples_per_s": len(examples) / median, "median_s": median,
                     "rounds": rounds, "rss_peak_mb": memory.rss_peak_mb, "gpu_peak_mb": memory.gpu_peak_mb})
    return rows


def served_requests(
    predict: Predict, examples: list[Example], settings: dict[str, Any], *, concurrency: int, requests: int,
    max_batch: int, max_wait_ms: float, rounds: int = 1,
) -> dict[str, Any]:
    """Requests/s and latency with ``concurrency`` closed-loop clients and a dynamic-batching server: the
    median requests/s of ``rounds`` rounds of ``requests`` each, latency percentiles over all of them.

    Each round follows an offline pass over ``examples`` at ``max_batch``, so that ``of_offline``, the
    median of the rounds' served/offline ratios, compares figures a noisy machine moved alike."""
    sized = {**settings, "predict_batch_size": max_batch}
    predict(examples[:max_batch], sized)  # warm-up
    rates: list[float] = []
    offline: list[float] = []
    latencies: list[float] = []
    batch_sizes: list[int] = []
    with measure.PeakMemory() as memory:
        for _ in range(rounds):
            offline.append(len(examples) / measure.timed(lambda: predict(examples, sized))[1])
            wall = _served_round(predict, examples, sized, concurrency, requests, max_batch, max_wait_ms / 1000,
                                 latencies, batch_sizes)
            rates.append(requests / wall)
    return {
        "concurrency": concurrency, "requests": requests, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
        "rounds": rounds, "requests_per_s": statistics.median(rates), "rounds_requests_per_s": rates,
        "offline_samples_per_s": statistics.median(offline), "rounds_offline_samples_per_s": offline,
        "of_offline": statistics.median(r / o for r, o in zip(rates, offline)),
        "latency_p50_ms": statistics.median(latencies), "latency_p95_ms": measure.percentile(latencies, 95),
        "latency_p99_ms": measure.percentile(latencies, 99), "mean_batch": statistics.mean(batch_sizes),
        "rss_peak_mb": memory.rss_peak_mb, "gpu_peak_mb": memory.gpu_peak_mb,
    }


def _served_round(predict: Predict, examples: list[Example], sized: dict[str, Any], concurrency: int, requests: int,
                  max_batch: int, max_wait: float, latencies: list[float], batch_sizes: list[int]) -> float:
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
        return f"{row['rss_peak_mb']:,.0f} MB" + (f" / GPU {gpu:,.0f} MB" if gpu is not None else "")

    table = Table(title=f"{result.approach} on {result.spec} ({result.source}, {result.n_examples} examples)",
                  title_justify="left")
    for column in ("Measure", "Setting", "Samples or req/s", "p50 ms", "p95 ms", "p99 ms", "Peak memory"):
        table.add_column(column, justify="left" if column in ("Measure", "Setting") else "right")
    raw_rates = {row["batch_size"]: row["samples_per_s"] for row in result.raw.get("throughput", [])}

    def versus(value: float, reference: float | None) -> str:
        return "" if not reference else f" ({value / reference:.2f}× raw)"

    for row in result.raw.get("throughput", []):
        table.add_row("[dim]raw[/]", f"batch {row['batch_size']}, tokenizer + forward", f"{row['samples_per_s']:,.1f}",
                      "-", "-", "-", mem(row))
    for row in result.throughput:
        table.add_row("throughput", f"batch {row['batch_size']}",
                      f"{row['samples_per_s']:,.1f}{versus(row['samples_per_s'], raw_rates.get(row['batch_size']))}",
                      "-", "-", "-", mem(row))
    raw_latency = result.raw.get("latency")
    if raw_latency:
        table.add_row("[dim]raw[/]", "batch 1, tokenizer + forward", f"{raw_latency['requests_per_s']:,.1f}",
                      f"{raw_latency['latency_p50_ms']:.1f}", f"{raw_latency['latency_p95_ms']:.1f}",
                      f"{raw_latency['latency_p99_ms']:.1f}", mem(raw_latency))
    lat = result.latency
    table.add_row("latency", "batch 1, one client", f"{lat['requests_per_s']:,.1f}",
                  f"{lat['latency_p50_ms']:.1f}{versus(lat['latency_p50_ms'], (raw_latency or {}).get('latency_p50_ms'))}",
                  f"{lat['latency_p95_ms']:.1f}", f"{lat['latency_p99_ms']:.1f}", mem(lat))
    s = result.served
    offline = f" ({s['of_offline']:.2f}× offline)" if s.get("of_offline") else ""
    table.add_row("served", f"{s['concurrency']} clients, batch ≤{s['max_batch']}, wait ≤{s['max_wait_ms']:g} ms "
                  f"(mean batch {s['mean_batch']:.1f})", f"{s['requests_per_s']:,.1f}{offline}", f"{s['latency_p50_ms']:.1f}",
                  f"{s['latency_p95_ms']:.1f}", f"{s['latency_p99_ms']:.1f}", mem(s))
    notes = [f"device: {result.environment.get('device', '')}"]
    if s.get("of_offline"):
        notes.append(f"served: median of {s['rounds']} rounds, each after an offline pass at batch {s['max_batch']} "
                     f"({s['offline_samples_per_s']:,.1f} samples/s); × offline: the median of the rounds' ratios")
    if result.raw:
        notes.append("raw: the same loaded model called directly (the approach's harness_reference: tokenizer and "
                     "forward, texts in the order given), timed the same way in the same run")
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


def latency_rows(predicts: list[Predict], examples: list[Example], settings: dict[str, Any],
                 samples: int) -> list[dict[str, Any]]:
    """Batch-1 latency of each predict on the same sampled requests (as compare samples them), interleaved
    request by request (:func:`harness.measure.interleaved_batch1_latency`), so their ratio is one run's."""
    items = measure.latency_sample(examples, samples)
    with measure.PeakMemory() as memory:
        latencies = measure.interleaved_batch1_latency(
            [lambda ex, predict=predict: predict([ex], settings) for predict in predicts], items)
    return [{**latency.summary(), "rss_peak_mb": memory.rss_peak_mb, "gpu_peak_mb": memory.gpu_peak_mb}
            for latency in latencies]
