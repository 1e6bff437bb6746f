"""What train and predict receive as ``progress``: progress bars and training log lines."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


class Bar:
    """One progress bar; ``advance(n)`` moves it."""

    def __init__(self, progress: Any, task_id: Any):
        self._progress = progress
        self._task_id = task_id

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task_id, n)


class RunProgress:
    """Progress bars on a rich console (or nowhere, when ``console`` is None) and a training-log sink."""

    def __init__(self, console: Any = None, on_log: Callable[[dict[str, Any]], None] | None = None):
        self._console = console
        self._on_log = on_log
        self.phases: dict[str, float] = {}
        self._open: list[list[Any]] = []  # per open phase: [name, start, seconds in phases nested inside it]
        self.carried: dict[str, float] = {}  # phases of a killed run's work, carried into its resumed run

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (``load``, ``prepare``, ``train_loop``, ``evaluation``, ``save``).

        Phases are exclusive: time in a phase nested inside another counts for the inner one only, so an
        evaluation inside the training loop is not training time. A phase entered again adds up.
        """
        self._open.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            _, start, nested = self._open.pop()
            elapsed = time.perf_counter() - start
            self.phases[name] = self.phases.get(name, 0.0) + elapsed - nested
            if self._open:
                self._open[-1][2] += elapsed

    def snapshot(self) -> dict[str, float]:
        """The phases so far, the open ones up to now: what a checkpoint records of the time spent."""
        now = time.perf_counter()
        phases = dict(self.phases)
        for index, (name, start, nested) in enumerate(self._open):
            inner = now - self._open[index + 1][1] if index + 1 < len(self._open) else 0.0
            phases[name] = phases.get(name, 0.0) + now - start - nested - inner
        return phases

    def carry(self, phases: dict[str, float]) -> None:
        """Add the phases a killed run spent before the checkpoint this run resumes from: a resumed run's
        figures then add up to an uninterrupted one's (its load and prepare, done again, count once)."""
        for name, seconds in phases.items():
            self.phases[name] = self.phases.get(name, 0.0) + seconds
            self.carried[name] = self.carried.get(name, 0.0) + seconds

    @contextmanager
    def bar(self, description: str, total: float | None) -> Iterator[Bar]:
        """A progress bar for the duration of the ``with`` block."""
        if self._console is None:
            yield Bar(None, None)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=True,
        ) as progress:
            yield Bar(progress, progress.add_task(description, total=total))

    def track(
        self,
        items: Iterable[T],
        description: str,
        total: float | None = None,
        weight: Callable[[T], float] | None = None,
    ) -> Iterator[T]:
        """Iterate ``items`` with a bar; ``weight(item)`` says how far each item moves it (default 1)."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        with self.bar(description, total) as bar:
            for item in items:
                yield item
                bar.advance(weight(item) if weight else 1)

    def log(self, **entry: Any) -> None:
        """Report a training log line: ``step``, ``epoch`` and ``loss`` or ``eval_*`` metrics."""
        if self._on_log is not None:
            self._on_log(entry)


SILENT = RunProgress()
