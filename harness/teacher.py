"""A teacher labels the training examples before the approaches train: seed 001's first step, a large model
behind an API labelling waybill lines as JSON, on which the small student is tuned.

``--teacher NAME`` (or ``teacher: NAME`` in the spec) names an approach that answers without training, such as
``openai`` pointed at any OpenAI-compatible endpoint (a hosted model, ``vllm serve``, a llama.cpp server); its
settings come from the spec and ``--set NAME.key=value`` as for any row. Before anything trains:

- its ``check`` runs (an endpoint that cannot serve is one line, exit 2);
- every train example's text is asked, in chunks, and each chunk's answers are appended to a cache in the store
  (``teacher/<key>.jsonl``, keyed by what changes answers: the approach, its settings without secrets and
  without those that only change how it asks (``concurrency``, ``timeout``, ``max_retries``, ...), the task's
  prompt; each line by its text's sha256) and flushed to disk as they arrive: a rerun, or one after a crash or
  a kill, asks only what is not there yet. Each answer keeps the server's ``system_fingerprint`` where it
  gave one, and a checksum of its content;
- the cache is read line by line, defensively: a line that is not UTF-8, not JSON, not an answer (a field
  missing or of the wrong type: a line a kill cut short) or whose checksum does not match (an answer edited by
  hand) is dropped, and so is a line without a checksum (an older harness's: it cannot be told from one
  edited by hand); their texts are asked again, one warning line says how many, and the cache is rewritten
  without them (atomically), so the next run reads no such line;
- only answers are cached: a request that failed (a 429, a 5xx, a time-out, after the retries) is not, so it
  is left out of this run's labels (counted) and asked again by the next run. A teacher most of whose requests
  fail (more than half) stops the compare in one line with the first error (exit 2), before anything trains;
- an answer that is no label of the task (or no valid record) is dropped and counted;
- the students train on the teacher's labels: their training data hash is the hash of those labels, so a
  different teacher is a different training run. Validation and test keep their gold answers, so checkpoints
  are selected and rows scored against gold;
- the agreement of the teacher's labels with the gold ones is reported (where the data has gold).

The teacher's own row on the test set is a row like any other: ``--plugins openai,qwen-lora --teacher openai``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.types import Example, Task

CHUNK = 32  # answers asked, then written, at a time: what a kill can lose


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Settings that change how a teacher asks, never what it answers: not part of its cache's key.
HOW_IT_ASKS = frozenset(
    {"seed", "concurrency", "timeout", "max_retries", "api_key_env", "predict_batch_size", "start_timeout"}
)


# What a cached answer holds, all covered by its checksum (``check``).
ANSWER = ("text", "label", "fields", "system_fingerprint")


def checksum(answer: dict[str, Any]) -> str:
    """A short sha256 of an answer's fields (harness.identity's canonical JSON): a hand edit changes it."""
    from harness import identity

    return identity.digest({key: answer.get(key) for key in ANSWER})[:16]


def check_teacher(plan: Any, where: str = "--teacher") -> None:
    """One line (exit 2) for a teacher that cannot answer without training, checked where the teacher is
    named (``--teacher``, or the spec's ``teacher:`` as ``where``), before the store is created: an engine
    (what it serves trains first) or an approach that trains (``num_train_epochs`` above 0: bert, qwen, ...;
    a decoder's ``num_train_epochs: 0`` is zero-shot and may teach). Its train would get no examples."""
    if plan is None:
        return
    if plan.trainer != plan.approach:
        raise UserError(
            f"{plan.name!r} serves a model that must train first; a teacher answers without training: "
            "start the server yourself (vllm serve ...) and point openai at it",
            where=where,
        )
    epochs = plan.train_settings.get("num_train_epochs")
    if isinstance(epochs, (int, float)) and epochs > 0:
        raise UserError(
            f"a teacher must answer without training ({plan.name!r} trains: num_train_epochs {epochs:g}); "
            "use a zero-shot approach or an endpoint such as openai",
            where=where,
        )


def cache_key(plan: Any, task: Task, mark: Any = None) -> str:
    """The teacher cache's name: what changes answers (approach, settings, task); a secret setting's value by
    ``mark`` (the store's keyed digest: a changed value is another cache)."""
    from harness import identity
    from harness.redaction import redact_settings

    settings = redact_settings(
        {k: v for k, v in plan.settings.items() if k not in plan.secrets and k not in HOW_IT_ASKS}, mark
    )
    return identity.digest(
        {
            "approach": plan.approach,
            "settings": settings,
            "task": {k: v for k, v in asdict(task).items() if k != "normalize"},
        }
    )[:32]


def teach(plugins: Any, spec: Any, data: Any, plan: Any, store: Any, console: Any = None) -> tuple[Any, dict[str, Any]]:
    """``data`` with its train examples labelled by the teacher ``plan`` (invalid answers dropped), and what
    happened: asked, cached, dropped, agreement with gold."""
    from harness.data_load import Datasets
    from harness.endpoint import Endpoint
    from harness.load_cache import load_for_serving
    from harness.metrics import record_outcome, valid_record
    from harness.units import SILENT_PROGRESS, without_answers

    name = plan.approach
    check_teacher(plan)  # the CLI checked it before the store was created; an embedding caller may not have
    task = spec.to_task(plan.prompt_row or plan.trainer)
    if plugins.implements(name, "check"):
        plugins.configured(name, plan.settings).check(task)
    path = store.root / "teacher" / f"{cache_key(plan, task, store.secret_mark)}.jsonl"
    answers, damaged, unverified = _read(path)
    if damaged or unverified:
        _rewrite(path, answers)  # the next run reads none of them, and warns nothing
        print(
            f"harness: warning: teacher cache {path}: {_dropped_lines(damaged, unverified)} dropped; asking again",
            file=sys.stderr,
        )
    todo = list({text_key(ex.text): ex for ex in data.train if text_key(ex.text) not in answers}.values())
    failed: dict[str, str] = {}  # text key -> the error of a request that got no answer (not cached)
    if todo:
        if console is not None:
            console.print(
                f"teacher {plan.name}: asking {len(todo)} of {len(data.train)} training texts "
                f"({len(data.train) - len(todo)} answered before)"
            )
        with tempfile.TemporaryDirectory(prefix="harness-teacher-") as workdir:
            trainer = plugins.configured(name, plan.train_settings, workdir=Path(workdir), progress=SILENT_PROGRESS)
            artifact = trainer.train(task, [], [])
            try:
                _, settings = load_for_serving(plugins, name, task, artifact, plan.settings)
                teacher = plugins.configured(name, settings, progress=SILENT_PROGRESS)
                asked = 0
                for start in range(0, len(todo), CHUNK):
                    chunk = todo[start : start + CHUNK]
                    predictions = teacher.predict(task, artifact, without_answers(chunk))
                    # Each answer's system_fingerprint, where the approach keeps them (openai does).
                    fingerprints = artifact.state.get("reply_fingerprints") or []
                    fingerprints = fingerprints if len(fingerprints) == len(chunk) else [None] * len(chunk)
                    rows = []
                    for example, prediction, fingerprint in zip(chunk, predictions, fingerprints):
                        if prediction.error:  # no answer: never cached, asked again next time
                            failed[text_key(example.text)] = prediction.error
                            continue
                        reply = {
                            "text": text_key(example.text),
                            "label": prediction.label,
                            "fields": prediction.fields,
                            "system_fingerprint": fingerprint,
                        }
                        rows.append({**reply, "check": checksum(reply)})
                    _append(path, rows)
                    answers.update((row["text"], row) for row in rows)
                    asked += len(chunk)
                    if 2 * len(failed) > asked:
                        first = next(iter(failed.values()))
                        raise UserError(
                            f"the teacher {plan.name!r} failed: {len(failed)} of {asked} requests got no "
                            f"answer (first: {first})".splitlines()[0],
                            where="--teacher",
                        )
            finally:
                for value in artifact.state.values():  # its client's connections
                    if isinstance(value, Endpoint):
                        value.close()
    labelled: list[Example] = []
    dropped, agree, with_gold = 0, 0, 0
    for example in data.train:
        answer = answers.get(text_key(example.text))
        if answer is None:  # its request failed: asked again by the next run
            continue
        if task.type == "classification":
            valid = answer["label"] in task.labels
            new = replace(example, label=answer["label"]) if valid else None
            right = valid and answer["label"] == example.label
        else:
            valid = valid_record(answer["fields"], task.fields)
            record = (
                {f: "" if answer["fields"][f] is None else str(answer["fields"][f]) for f in task.fields}
                if valid
                else None
            )
            new = replace(example, fields=record) if valid else None
            right = valid and record_outcome(task.fields, example.fields, record, task.normalize)["exact"] == 1
        if new is None:
            dropped += 1
            continue
        labelled.append(new)
        if example.label is not None or example.fields is not None:
            with_gold += 1
            agree += bool(right)
    if not labelled:
        raise UserError(
            f"the teacher {plan.name!r} gave no valid answer for any of the {len(data.train)} training texts",
            where="--teacher",
        )
    summary = {
        "teacher": plan.name,
        "asked": len(todo),
        "answered_before": len(data.train) - len(todo),
        "dropped_invalid": dropped,
        "failed": len(failed),
        "kept": len(labelled),
        "cache": path.name,
        "agreement_with_gold": agree / with_gold if with_gold else None,
    }
    taught = Datasets(
        train=labelled, validation=data.validation, test=data.test, validation_source=data.validation_source
    )
    return taught, summary


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append answers to the cache and put them on disk: a kill loses none of them."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        if handle.tell() and not _ends_a_line(path):
            handle.write("\n")  # a line a kill cut short stays a line of its own, ignored
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        handle.flush()
        os.fsync(handle.fileno())


def _ends_a_line(path: Path) -> bool:
    """Whether the file's last byte is a newline (read alone: a large cache is not read again per chunk)."""
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _read(path: Path) -> tuple[dict[str, dict[str, Any]], int, int]:
    """The cached answers by text key (a later line wins), the number of damaged lines dropped and that of
    lines without a checksum dropped (an older harness's, or a failed request it kept). Read as bytes and
    decoded line by line: a line that is not UTF-8 is one damaged line, not an unreadable cache. Lines are split
    at newlines alone (an answer may hold U+2028 or U+0085, which JSON leaves as they are)."""
    answers: dict[str, dict[str, Any]] = {}
    damaged = unverified = 0
    if not path.is_file():
        return answers, damaged, unverified
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot be read ({exc.strerror})", where=str(path)) from None
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # not UTF-8, not JSON (a line a kill cut short)
            damaged += 1
            continue
        if _older(row):
            unverified += 1
        elif _is_answer(row) and row["check"] == checksum(row):
            answers[row["text"]] = row
        else:  # not an answer's fields, or changed since it was written (a hand edit)
            damaged += 1
    return answers, damaged, unverified


def _dropped_lines(damaged: int, unverified: int) -> str:
    parts = []
    if damaged:
        parts.append(f"{damaged} damaged line{'s' if damaged != 1 else ''}")
    if unverified:
        parts.append(
            f"{unverified} line{'s' if unverified != 1 else ''} without a checksum (written by an older "
            "harness: unverified)"
        )
    return " and ".join(parts)


def _older(row: Any) -> bool:
    """Whether a cache line is an older harness's: an answer (or a failed request) without a checksum."""
    return (
        isinstance(row, dict)
        and "check" not in row
        and isinstance(row.get("text"), str)
        and ("error" in row or ("label" in row and "fields" in row))
    )


def _is_answer(row: Any) -> bool:
    """Whether a cache line holds every field of an answer, each of its type."""
    return (
        isinstance(row, dict)
        and all(key in row for key in (*ANSWER, "check"))
        and isinstance(row["text"], str)
        and isinstance(row["check"], str)
        and (row["label"] is None or isinstance(row["label"], str))
        and (row["fields"] is None or isinstance(row["fields"], dict))
        and (row["system_fingerprint"] is None or isinstance(row["system_fingerprint"], str))
    )


def _rewrite(path: Path, answers: dict[str, dict[str, Any]]) -> None:
    """Replace the cache by its sound answers, one line each, atomically (a temporary file, then os.replace):
    a kill leaves the old cache or the new one, never half of one."""
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in answers.values())
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, path.stat().st_mode & 0o777)  # the cache's own mode, not the temporary file's 0600
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def describe(summary: dict[str, Any]) -> str:
    agreement = summary.get("agreement_with_gold")
    failed = summary.get("failed") or 0
    return (
        f"trained on the labels of teacher {summary['teacher']}: {summary['kept']} kept, "
        f"{summary['dropped_invalid']} invalid answers dropped"
        + (f", {failed} requests failed (left out; asked again next run)" if failed else "")
        + (f", {agreement:.1%} agreeing with gold" if agreement is not None else "")
    )
