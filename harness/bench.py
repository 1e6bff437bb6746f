"""``harness bench``: serving-style numbers for one approach, through the same measuring code as compare.

- throughput at several batch sizes (the whole sample, after a warm-up call; median of ``rounds``);
- batch-1 latency p50/p95/p99 (:func:`harness.measure.batch1_latency`, as compare uses);
- requests/s at a given concurrency: ``concurrency`` clients each send one request at a time and wait
  for its answer (a closed loop); a server thread batches whatever has arrived, up to ``max_batch``
  requests or ``max_wait_ms`` after the first, the way a dynamic-batching service would see them.
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
    the order given, so that :func:`batch_throughput` and :func:`latency_row` time it exactly as predict."""

    def predict(examples: list[Example], settings: dict[str, Any]) -> list[Prediction]:
        size = settings["predict_batch_size"]
        for start in range(0, len(examples), size):
            forward([example.text for example in examples[start : start + size]])
        return []

    return predict


def batch_throughput(predict: Predict, examples: list[Example], settings: dict[str, Any], batch_size: int, rounds: int) -> dict[str, Any]:
    """Samples/s over ``examples`` at one batch size: warm-up call, then the median of ``rounds`` timed calls."""
    sized = {**settings, "predict_batch_size": batch_size}
    with measure.PeakMemory() as memory:
        predict(examples[: 2 * batch_size], sized)
        seconds = [measure.timed(lambda: predict(examples, sized))[1] for _ in range(rounds)]
    median = statistics.median(seconds)
    return {"batch_size": batch_size, "samples_per_s": len(examples) / median, "median_s": median,
            "rounds": rounds, "rss_peak_mb": memory.rss_peak_mb, "gpu_peak_mb": memory.gpu_peak_mb}


def served_requests(
    predict: Predict, examples: list[Example], settings: dict[str, Any], *, concurrency: int, requests: int,
    max_batch: int, max_wait_ms: float,
) -> dict[str, Any]:
    """Requests/s and latency with ``concurrency`` closed-loop clients and a dynamic-batching server."""
    inbox: queue.Queue = queue.Queue()
    latencies: list[float] = []
    batch_sizes: list[int] = []
    next_index = iter(range(requests))
    lock = threading.Lock()
    sized = {**settings, "predict_batch_size": max_batch}
    stop = object()
    failures: list[BaseException] = []

    def server() -> None:
        while True:
            first = inbox.get()
            if first is stop:
                return
            batch = [first]
            deadline = time.perf_counter() + max_wait_ms / 1000
            while len(batch) < max_batch:
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
                predict([example for example, _ in batch], sized)
                measure.cuda_sync()
            except BaseException as exc:  # clients must not wait for ever on a failed batch
                failures.append(exc)
            finally:
                batch_sizes.append(len(batch))
                for _, done in batch:
                    done.set()

    def client() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            if failures:
                return
            done = threading.Event()
            start = time.perf_counter()
            inbox.put((examples[index % len(examples)], done))
            done.wait()
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)

    predict(examples[:max_batch], sized)  # warm-up
    serving = threading.Thread(target=server, daemon=True)
    clients = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    with measure.PeakMemory() as memory:
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
    return {
        "concurrency": concurrency, "requests": requests, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
        "requests_per_s": requests / wall, "latency_p50_ms": statistics.median(latencies),
        "latency_p95_ms": measure.percentile(latencies, 95), "latency_p99_ms": measure.percentile(latencies, 99),
        "mean_batch": statistics.mean(batch_sizes), "rss_peak_mb": memory.rss_peak_mb, "gpu_peak_mb": memory.gpu_peak_mb,
    }


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
    table.add_row("served", f"{s['concurrency']} clients, batch ≤{s['max_batch']}, wait ≤{s['max_wait_ms']:g} ms "
                  f"(mean batch {s['mean_batch']:.1f})", f"{s['requests_per_s']:,.1f}", f"{s['latency_p50_ms']:.1f}",
                  f"{s['latency_p95_ms']:.1f}", f"{s['latency_p99_ms']:.1f}", mem(s))
    notes = [f"device: {result.environment.get('device', '')}"]
    if result.raw:
        notes.append("raw: the same loaded model called directly (the approach's harness_reference: tokenizer and "
                     "forward, texts in the order given), timed the same way in the same run")
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


def latency_row(predict: Predict, examples: list[Example], settings: dict[str, Any], samples: int) -> dict[str, Any]:
    with measure.PeakMemory() as memory:
        latency = measure.sampled_batch1_latency(lambda ex: predict([ex], settings), examples, samples)
    return {**latency.summary(), "rss_peak_mb": memory.rss_peak_mb, "gpu_peak_mb": memory.gpu_peak_mb}
