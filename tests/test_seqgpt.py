"""seqgpt: the seed's prompt to the character, its answers parsed as SeqGPT writes them, extraction split
into prompts of at most 6 names and merged, and whole compares on a tiny BLOOM with a real byte-level BPE
tokenizer: waybill beside qwen (scored by the core's extraction metrics) and THUCNews beside bert."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED
from harness_plugins.seqgpt import field_groups, merge_fields, parse_label, parse_lines, seqgpt_prompt

NAMES = ["财经", "房产", "股票", "体育", "Sports"]
LABELS = ["finance", "estate", "stocks", "sport", "sports-en"]


def test_the_prompt_is_the_seeds_to_the_character():
    assert (
        seqgpt_prompt("classification", ["财经", "体育", "娱乐"]).format(text="央行宣布下调存款准备金率")
        == "输入: 央行宣布下调存款准备金率\n分类: 财经，体育，娱乐\n输出: [GEN]"
    )
    assert (
        seqgpt_prompt("extraction", ["公司名称", "金额"]).format(text="小米集团拟回购{股份}")
        == "输入: 小米集团拟回购{股份}\n抽取: 公司名称，金额\n输出: [GEN]"
    )


@pytest.mark.parametrize(
    "raw, label",
    [
        ("财经", "finance"),  # the name alone
        ("股票\n", "stocks"),
        ("体育: 国足1比0胜泰国", "sport"),  # a line naming the label and its evidence
        (" 房 产。", "estate"),  # spaces and punctuation: the seed's normalisation
        ("ＳＰＯＲＴＳ", "sports-en"),  # full-width and case: NFKC and case folding
        ("航天", None),  # a name outside the list: invalid
        ("", None),
        ("财经，体育", None),  # two names: not one answer
    ],
)
def test_a_classification_answer_is_an_asked_name_or_invalid(raw, label):
    assert parse_label(raw, NAMES, LABELS) == label


def test_extraction_lines_with_several_values_none_and_names_not_asked():
    raw = "公司名称: 小米集团，华为\n动作: None\n金额: 无\n公司名称: 小米集团\n时间: 12个月内\n一行没有冒号\n其他: x"
    assert parse_lines(raw, ["公司名称", "动作", "金额", "时间", "地点"]) == {
        "公司名称": ["小米集团", "华为"],
        "动作": [],
        "金额": [],
        "时间": ["12个月内"],
    }


def test_eight_fields_are_asked_in_two_prompts_and_merged_into_one_record():
    fields = [f"f{i}" for i in range(8)]
    names = [f"字段{i}" for i in range(8)]
    groups = field_groups(fields, names, 6)
    assert [[f for f, _ in g] for g in groups] == [fields[:4], fields[4:]]
    record = merge_fields(
        [(groups[0], "字段0: 甲\n字段1: None\n字段3: 丙，丁"), (groups[1], "字段5: 戊\n字段9: 不是问的")]
    )
    assert record == {
        "f0": "甲",
        "f1": None,
        "f2": None,
        "f3": "丙，丁",
        "f4": None,
        "f5": "戊",
        "f6": None,
        "f7": None,
    }
    assert merge_fields([(groups[0], "我不知道"), (groups[1], "")]) is None  # no line names a field: invalid


def lines(source, n, folder, name):
    rows = (source).read_text(encoding="utf-8").splitlines()[:n]
    (folder / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / name


def test_seqgpt_beside_qwen_on_waybill_is_scored_as_extraction(cli, tmp_path, tiny_bloom, tiny_qwen):
    w = SHARED / "data" / "waybill"
    data = (
        f"train={lines(w / 'train.jsonl', 16, tmp_path, 'train.jsonl')},"
        f"validation={lines(w / 'dev.jsonl', 4, tmp_path, 'dev.jsonl')},"
        f"test={lines(w / 'test.jsonl', 6, tmp_path, 'test.jsonl')}"
    )
    result = cli(
        "compare",
        "--plugins",
        "seqgpt,zero-shot",
        "--spec",
        "waybill",
        "--data",
        data,
        "--set",
        f"seqgpt.model={tiny_bloom}",
        "--set",
        "seqgpt.max_new_tokens=12",
        "--set",
        "seqgpt.num_beams=2",
        "--set",
        "seqgpt.field_names=姓名,电话,省份,城市,区县,详细地址",
        "--set",
        f"qwen.model={tiny_qwen}",
        "--set",
        "qwen.max_new_tokens=8",
        "--set",
        "qwen.max_length=256",
        "--set",
        "qwen.dtype=float32",
        "--latency-samples",
        "1",
        "--launcher",
        "inline",
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    runs = {r["approach"]: r for r in json.loads((tmp_path / "out.json").read_text())["runs"]}
    seqgpt = runs["seqgpt"]
    assert seqgpt["status"] == "ok", seqgpt["error"]
    assert {"exact_match", "valid_rate", "per_field"} <= set(seqgpt["metrics"])
    assert seqgpt["speed"]["generated_tokens"] > 0
    assert "asked with the fields 姓名，电话，省份，城市，区县，详细地址" in " ".join(seqgpt["serving"]["run_notes"])
    predictions = [
        json.loads(line) for line in next(tmp_path.glob(f".harness/runs/{seqgpt['run_id']}*/predictions.jsonl")).open()
    ]
    assert len(predictions) == 6 and all(p["raw"] is not None for p in predictions)


def test_seqgpt_beside_bert_on_thucnews_asks_the_chinese_names(cli, tmp_path, tiny_bloom, tiny_bert):
    t = SHARED / "data" / "thucnews"
    train, test = (
        lines(t / "train.jsonl", 40, tmp_path, "train.jsonl"),
        lines(t / "test.jsonl", 8, tmp_path, "test.jsonl"),
    )
    data = f"train={train},test={test}"
    result = cli(
        "compare",
        "--plugins",
        "seqgpt,bert",
        "--spec",
        "thucnews",
        "--data",
        data,
        "--set",
        f"seqgpt.model={tiny_bloom}",
        "--set",
        "seqgpt.max_new_tokens=6",
        "--set",
        "seqgpt.num_beams=2",
        "--set",
        f"bert.model={tiny_bert}",
        "--set",
        "bert.num_train_epochs=1",
        "--latency-samples",
        "1",
        "--launcher",
        "inline",
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    runs = {r["approach"]: r for r in json.loads((tmp_path / "out.json").read_text())["runs"]}
    assert runs["seqgpt"]["status"] == "ok" and runs["bert"]["status"] == "ok"
    assert "asked with the labels 财经，房产，股票，教育，科技，社会，时政，体育，游戏，娱乐" in " ".join(
        runs["seqgpt"]["serving"]["run_notes"]
    )
    # A random tiny model mostly names no label: such answers are invalid and counted, not a crash.
    predictions = [
        json.loads(line)
        for line in next(tmp_path.glob(f".harness/runs/{runs['seqgpt']['run_id']}*/predictions.jsonl")).open()
    ]
    assert runs["seqgpt"]["metrics"]["invalid"] == sum(p["label"] is None for p in predictions)
    assert all(
        p["label"] is None
        or p["label"] in ["财经", "房产", "股票", "教育", "科技", "社会", "时政", "体育", "游戏", "娱乐"]
        for p in predictions
    )
