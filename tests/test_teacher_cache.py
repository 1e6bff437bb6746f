"""The teacher's cache read defensively, against the real OpenAI-compatible test server (tests/openai_server.py):
a line that is not UTF-8, not JSON, not an answer, cut short by a kill or edited by hand is dropped, its text
asked again, one warning line counts them, and the cache is healthy after (the next run warns nothing and asks
nothing); a cache without checksums (an older harness's) is asked again, the warning saying why. And a teacher
that trains (``--teacher bert``, or ``teacher: bert`` in a spec) is one line, exit 2, before the store exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import AG_NEWS, SHARED
from openai_server import OpenAIServer

AG_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


@pytest.fixture(scope="module")
def plugins():
    from harness.plugins import load_plugins

    return load_plugins()


@pytest.fixture
def ag_train(shared) -> tuple[list, dict[str, str]]:
    """The first 8 AG News train texts as Examples, and the label the server answers for each."""
    from harness.types import Example

    rows = [json.loads(line) for line in (AG_NEWS / "train.jsonl").read_text(encoding="utf-8").splitlines()[:8]]
    examples = [Example(str(i), row["text"], label=AG_LABELS[row["label"]]) for i, row in enumerate(rows)]
    return examples, {ex.text: ex.label for ex in examples}


def teach_once(
    plugins, server: OpenAIServer, examples: list, store_root: Path, capsys, spec_name: str = "agnews"
) -> tuple[dict, list[str], list[str]]:
    """One teacher pass (harness.teacher.teach, as compare calls it) over ``examples``: the labels (or records)
    it gave by text, the lines it wrote to stderr and the texts the server was asked."""
    from harness.data_load import Datasets
    from harness.planning import plan_settings
    from harness.settings import parse_overrides
    from harness.spec import load_spec
    from harness.store import Store
    from harness.teacher import teach

    spec = load_spec(spec_name)
    overrides = parse_overrides(
        [
            f"openai.base_url={server.base_url}",
            "openai.model=test-model",
            "openai.api_key_env=",
            "openai.max_retries=1",
            "openai.timeout=10",
        ]
    )
    plan = plan_settings(plugins, spec, ["openai"], overrides)["openai"]
    data = Datasets(train=examples, validation=[], test=[], validation_source="none")
    capsys.readouterr()
    before = len(server.log)
    taught, _ = teach(plugins, spec, data, plan, Store(store_root))
    stderr = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    asked = [e["text"] for e in server.log[before:] if e["path"].endswith("completions")]
    return {ex.text: ex.label or ex.fields for ex in taught.train}, stderr, asked


def cache_lines(store_root: Path) -> tuple[Path, list[bytes]]:
    (path,) = (store_root / "teacher").glob("*.jsonl")
    return path, path.read_bytes().split(b"\n")[:-1]


def test_a_damaged_teacher_cache_is_asked_again_in_one_warning_and_healthy_after(plugins, ag_train, tmp_path, capsys):
    from harness.teacher import text_key

    examples, gold = ag_train
    texts = [ex.text for ex in examples]
    with OpenAIServer(gold, AG_LABELS) as server:
        labels, stderr, asked = teach_once(plugins, server, examples, tmp_path, capsys)
        assert labels == gold and not stderr and sorted(asked) == sorted(texts)
        path, lines = cache_lines(tmp_path)
        rows = {row["text"]: row for row in map(json.loads, lines)}
        assert len(rows) == 8 and all(isinstance(row["check"], str) and row["check"] for row in rows.values())

        # Five of the eight answers damaged on disk, three sound: valid JSON but not an object; an answer without
        # its label; bytes that are not UTF-8; a label edited by hand (an answer the server would not give, and a
        # valid label); a last line a kill cut short.
        row = {i: rows[text_key(text)] for i, text in enumerate(texts)}
        no_label = {k: v for k, v in row[1].items() if k != "label"}
        edited = {**row[3], "label": next(label for label in AG_LABELS if label != gold[texts[3]])}
        damaged = [
            b"[1,2]",
            json.dumps(no_label).encode(),
            b"\xff\xfe" + json.dumps(row[2]).encode()[2:],
            json.dumps(edited, ensure_ascii=False).encode(),
        ]
        sound = [json.dumps(row[i], ensure_ascii=False).encode() for i in (5, 6, 7)]
        cut = json.dumps(row[4]).encode()[:40]
        path.write_bytes(b"\n".join(damaged[:2] + sound[:1] + damaged[2:] + sound[1:]) + b"\n" + cut)
        with pytest.raises(UnicodeDecodeError):
            path.read_text(encoding="utf-8")

        labels, stderr, asked = teach_once(plugins, server, examples, tmp_path, capsys)
        assert stderr == [f"harness: warning: teacher cache {path}: 5 damaged lines dropped; asking again"]
        assert sorted(asked) == sorted(texts[:5])  # exactly the damaged ones, once each
        assert labels == gold  # the server's labels, the hand edit's gone

        # The cache is healthy again: every line an answer whose checksum holds, one per text, the server's.
        path_after, lines = cache_lines(tmp_path)
        assert path_after == path and len(lines) == 8
        rows = [json.loads(line.decode("utf-8")) for line in lines]
        assert {row["text"]: row["label"] for row in rows} == {text_key(text): gold[text] for text in texts}
        assert not list(path.parent.glob(".*.tmp"))

        labels, stderr, asked = teach_once(plugins, server, examples, tmp_path, capsys)
        assert labels == gold and stderr == [] and asked == []


def test_an_older_cache_without_checksums_is_unverified_and_asked_again(plugins, ag_train, tmp_path, capsys):
    examples, gold = ag_train
    texts = [ex.text for ex in examples]
    with OpenAIServer(gold, AG_LABELS) as server:
        teach_once(plugins, server, examples, tmp_path, capsys)
        path, lines = cache_lines(tmp_path)
        # What older harnesses wrote: answers without a checksum (one with the first format's "error": null,
        # one a failed request it kept), and one line that is no answer of any harness.
        old = [{k: v for k, v in json.loads(line).items() if k != "check"} for line in lines]
        old[0] = {**old[0], "error": None}
        old[1] = {"text": old[1]["text"], "label": None, "fields": None, "error": "HTTP 500: internal error"}
        path.write_text("".join(json.dumps(row) + "\n" for row in old) + '"just a string"\n', encoding="utf-8")

        labels, stderr, asked = teach_once(plugins, server, examples, tmp_path, capsys)
        assert stderr == [
            f"harness: warning: teacher cache {path}: 1 damaged line and 8 lines without a checksum "
            "(written by an older harness: unverified) dropped; asking again"
        ]
        assert sorted(asked) == sorted(texts) and labels == gold

        labels, stderr, asked = teach_once(plugins, server, examples, tmp_path, capsys)
        assert labels == gold and stderr == [] and asked == []


def test_an_answer_holding_a_unicode_line_separator_stays_one_line(plugins, shared, tmp_path, capsys):
    """JSON leaves U+2028 and U+0085 as they are: the cache is split at newlines alone, so a record holding them
    is read back whole, not as damaged halves."""
    from harness.types import Example

    row = json.loads((SHARED / "data" / "waybill" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    fields = {**row["fields"], "specific_location": row["fields"]["specific_location"] + "\u2028二楼\x85东"}
    examples = [Example("0", row["text"], fields=fields)]
    with OpenAIServer({row["text"]: fields}) as server:
        labels, _, _ = teach_once(plugins, server, examples, tmp_path, capsys, "waybill")
        assert labels == {row["text"]: fields}
        path, lines = cache_lines(tmp_path)
        assert "\u2028" in lines[0].decode("utf-8")
        labels, stderr, asked = teach_once(plugins, server, examples, tmp_path, capsys, "waybill")
    assert labels == {row["text"]: fields} and stderr == [] and asked == []


def _agnews_data(folder: Path) -> str:
    """The first 32 train and test lines of ../shared's AG News: every label has training examples."""
    for split in ("train", "test"):
        lines = (AG_NEWS / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:32]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"train={folder / 'train.jsonl'},test={folder / 'test.jsonl'}"


@pytest.mark.parametrize("named_in", ["option", "spec"])
def test_a_teacher_that_trains_is_one_line_before_the_store_is_created(named_in, shared, tmp_path):
    home = tmp_path / "home"
    args = ["compare", "--plugins", "bert", "--data", _agnews_data(tmp_path)]
    if named_in == "option":
        args += ["--spec", "agnews", "--teacher", "bert"]
        where = "--teacher"
    else:
        spec = tmp_path / "taught.yaml"
        text = (Path(__file__).resolve().parent.parent / "specs" / "agnews.yaml").read_text(encoding="utf-8")
        spec.write_text(text + "teacher: bert\n", encoding="utf-8")
        args += ["--spec", str(spec)]
        where = f"{spec}: teacher"
    result = subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HARNESS_HOME": str(home)},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines == [
        f"harness: error: {where}: a teacher must answer without training ('bert' trains: "
        "num_train_epochs 5); use a zero-shot approach or an endpoint such as openai"
    ]
    assert not home.exists() or not any(home.iterdir())
    assert not (tmp_path / ".harness").exists()


def test_which_approaches_may_teach(plugins, shared):
    """An endpoint or a zero-shot model may; one that trains (num_train_epochs above 0) or an engine (whose
    model trains first) may not: each a UserError naming where the teacher was named."""
    from harness.errors import UserError
    from harness.planning import plan_settings
    from harness.settings import parse_overrides
    from harness.spec import load_spec
    from harness.teacher import check_teacher

    spec = load_spec("agnews")
    names = ["openai", "qwen", "bert", "bert-onnx"]
    plans = plan_settings(
        plugins, spec, names, parse_overrides(["openai.base_url=http://127.0.0.1:9/v1", "qwen.num_train_epochs=0"])
    )
    check_teacher(plans["openai"])
    check_teacher(plans["qwen"])  # the untuned decoder asked with the spec's prompt
    with pytest.raises(
        UserError,
        match=r"^specs/agnews.yaml: teacher: a teacher must answer without training "
        r"\('bert' trains: num_train_epochs 5\)",
    ):
        check_teacher(plans["bert"], "specs/agnews.yaml: teacher")
    with pytest.raises(UserError, match=r"^--teacher: 'bert-onnx' serves a model that must train first"):
        check_teacher(plans["bert-onnx"])
