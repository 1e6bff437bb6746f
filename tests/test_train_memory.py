"""Training memory (issue 36): ``gradient_checkpointing`` true, false or auto, auto decided by harness.train_memory's
estimate against the memory available (``HARNESS_AVAILABLE_MEMORY_MB`` says it instead of the machine), the same
step either way, and the setting as the spec and ``--set`` give it. Tiny models from real configs, the real
Trainer."""

from __future__ import annotations

import pytest

import harness_plugins.qwen as qwen
from harness import train_memory
from harness.errors import UserError
from harness.plugins import load_plugins
from harness.progress import RunProgress
from harness.settings import resolve_settings
from harness.spec import load_spec
from harness.types import Example, Task

TASK = Task("classification", ("a", "b"), option_labels=("yes", "a much longer answer than that"))
EXAMPLES = [
    Example("1", "rain and wind all day", label="a"),
    Example("2", "the match ended in a draw", label="b"),
    Example("3", "a long sunny afternoon with a light breeze by the sea", label="a"),
    Example("4", "goal", label="b"),
]
# One SGD step (Adam's first step hides the size of a gradient), no clipping, fp32.
ONE_STEP = {
    "optim": "sgd",
    "learning_rate": 0.5,
    "max_grad_norm": 1e9,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "train_sampler": "sequential",
    "warmup_steps": 0.0,
    "logging_steps": 1.0,
    "eval_steps": 1.0,
    "mixed_precision": "no",
    "answer": "label",
    "scoring": "perplexity",
}


def train(tiny_qwen, tmp_path, name: str = "qwen", **settings):
    """One step of ``name`` on the tiny Qwen3: the artifact, the run's log, and how many times the first layer's
    MLP ran in training (twice a micro-batch where checkpointing recomputes it)."""
    import torch
    from transformers import AutoModelForCausalLM

    calls = []
    original = AutoModelForCausalLM.from_pretrained

    def counted(*args, **kwargs):
        model = original(*args, **kwargs)
        mlp = model.model.layers[0].mlp
        forward = mlp.forward  # wrapped, not hooked: the recomputation runs no forward hooks

        def counting(*inputs, **named):
            if mlp.training and torch.is_grad_enabled():
                calls.append(1)
            return forward(*inputs, **named)

        mlp.forward = counting
        return model

    plugins = load_plugins(entry_points=False)
    plugins.register(qwen, "qwen")
    log: list[dict] = []
    values = {**qwen.DEFAULTS, "model": str(tiny_qwen), "seed": 42, "random_weights": False, **ONE_STEP, **settings}
    torch.manual_seed(0)
    AutoModelForCausalLM.from_pretrained = counted
    try:
        artifact = plugins.configured(name, values, workdir=tmp_path, progress=RunProgress(on_log=log.append)).train(
            TASK, EXAMPLES, []
        )
    finally:
        AutoModelForCausalLM.from_pretrained = original
    return artifact, log, len(calls)


def notes(log: list[dict]) -> list[str]:
    return [entry["note"] for entry in log if "note" in entry]


@pytest.mark.parametrize(("available_mb", "on"), [("1", True), ("1000000", False)])
def test_auto_turns_checkpointing_on_where_the_estimate_exceeds_the_memory_available(
    tiny_qwen, tmp_path, monkeypatch, available_mb, on
):
    monkeypatch.setenv(train_memory.AVAILABLE_ENV, available_mb)
    artifact, log, calls = train(tiny_qwen, tmp_path)
    assert artifact.info["gradient_checkpointing"] is on
    (line,) = notes(log)  # one line of the run's log says which and why
    assert line.startswith(f"gradient checkpointing {'on' if on else 'off'} (auto): training would need about ")
    assert f"{'more' if on else 'no more'} than the " in line and "(HARNESS_AVAILABLE_MEMORY_MB)" in line
    assert calls == (4 if on else 2)  # two micro-batches, each layer run again in the backward pass where on
    assert not artifact.state["model"].model.layers[0].gradient_checkpointing  # off again for serving


@pytest.mark.parametrize("name", ["qwen", "qwen-lora"])
def test_checkpointing_takes_the_step_it_takes_without(tiny_qwen, tmp_path, name):
    """The same math: the recomputed activations are the ones the forward pass had, LoRA's dropout included
    (its random draws are replayed)."""
    import torch

    steps = {}
    for setting in (False, True):
        artifact, log, _ = train(tiny_qwen, tmp_path / str(setting), name, gradient_checkpointing=setting)
        assert artifact.info["gradient_checkpointing"] is setting
        assert notes(log) == [
            f"gradient checkpointing {'on' if setting else 'off'} (gradient_checkpointing: {str(setting).lower()})"
        ]
        state = artifact.state["model"].state_dict()
        steps[setting] = (artifact.info["train_loss"], {k: v.detach().clone() for k, v in state.items()})
    (loss_off, off), (loss_on, on) = steps[False], steps[True]
    assert loss_on == pytest.approx(loss_off, rel=1e-6)
    for key in off:
        assert torch.allclose(off[key], on[key], atol=1e-6, rtol=1e-5), key


def test_the_estimate_adds_weights_gradients_optimizer_and_activations(tiny_qwen):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen)
    parameters = sum(p.numel() for p in model.parameters())
    full = train_memory.estimate_training_memory(model, batch_size=4, longest_row=100)
    assert full is not None and full.tokens == 400
    assert (full.weights, full.gradients, full.optimizer) == (4 * parameters, 4 * parameters, 8 * parameters)
    assert full.activations == 400 * 2 * (10 * 64 + 4 * 128) * 4  # tokens x layers x (10 hidden + 4 intermediate)
    checkpointed = train_memory.estimate_training_memory(model, batch_size=4, longest_row=100, checkpointing=True)
    assert checkpointed is not None and checkpointed.activations == 400 * (2 * 64 * 4 + (10 * 64 + 4 * 128) * 4)
    for p in model.parameters():  # frozen (a LoRA base): no gradients, no optimizer state
        p.requires_grad_(False)
    frozen = train_memory.estimate_training_memory(model, batch_size=4, longest_row=100)
    assert frozen is not None and (frozen.gradients, frozen.optimizer) == (0, 0)

    needed = int(full.total * train_memory.MARGIN)  # the estimate and its margin
    assert train_memory.use_checkpointing("auto", full, needed, "test")[0] is False  # fits exactly: off
    assert train_memory.use_checkpointing("auto", full, needed - 1, "test")[0] is True
    assert train_memory.use_checkpointing("auto", full, full.total, "test")[0] is True  # no room for the margin
    assert train_memory.use_checkpointing(True, full, 10 * full.total, "test")[0] is True  # as given
    assert train_memory.use_checkpointing(False, full, 1, "test")[0] is False
    off, line = train_memory.use_checkpointing("auto", None, 1, "test")
    assert not off and line.endswith("the model's config does not say its layers' sizes")


def test_the_setting_is_true_false_or_auto_from_the_spec_and_the_command_line(tmp_path):
    spec = load_spec("waybill")
    for given, value in (("true", True), ("false", False), ("auto", "auto")):
        settings = resolve_settings("qwen", qwen.QwenSettings, spec, {"gradient_checkpointing": given})
        assert (
            settings["gradient_checkpointing"] is value
            if isinstance(value, bool)
            else settings["gradient_checkpointing"] == value
        )
    assert resolve_settings("qwen", qwen.QwenSettings, spec, {})["gradient_checkpointing"] == "auto"
    for given in ("maybe", "1", "none"):
        with pytest.raises(UserError) as info:
            resolve_settings("qwen", qwen.QwenSettings, spec, {"gradient_checkpointing": given})
        assert str(info.value) == (f"--set qwen.gradient_checkpointing: {given!r} is not one of true, false, auto")
    written = tmp_path / "s.yaml"
    written.write_text(
        "name: s\ntask: {type: classification, labels: [a, b]}\ndataset: {train: t.jsonl, test: t.jsonl}\n"
        "plugins:\n  qwen: {gradient_checkpointing: 2}\n",
        encoding="utf-8",
    )
    with pytest.raises(UserError) as info:
        resolve_settings("qwen", qwen.QwenSettings, load_spec(str(written)), {})
    assert str(info.value).endswith("plugins.qwen.gradient_checkpointing: '2' is not one of true, false, auto")
    # What it is, not how it is served: a training setting, part of the trained model's identity.
    assert "gradient_checkpointing" not in qwen.Qwen().describe().predict_settings


FRAGMENTED = """
import json, torch
from harness import train_memory
freed = train_memory.FreedMemory(slack=64 * train_memory.MB)
kept, blocks = [], []
for _ in range(3000):  # 64 KB blocks, below malloc's mmap threshold, each followed by a small live one
    blocks.append(torch.ones(16 * 1024))
    kept.append(torch.ones(8))
del blocks
held = [freed.held_beyond_used()]
train_memory.FreedMemory(slack=10 * held[0]).check()  # within its slack: nothing given back
held.append(freed.held_beyond_used())
freed.check()
held.append(freed.held_beyond_used())
print(json.dumps({"active": freed.active, "held": held, "trims": freed.trims, "kept": len(kept)}))
"""


def test_freed_memory_goes_back_to_the_system_beyond_the_slack():
    """glibc keeps freed blocks that small live allocations separate; FreedMemory gives their pages back once the
    process holds more than its slack beyond what malloc has handed out, and leaves them below it. In a process of
    its own: what an earlier test left in this one's heap would change what a block reuses."""
    import json
    import subprocess
    import sys

    found = json.loads(subprocess.run([sys.executable, "-c", FRAGMENTED], capture_output=True, check=True).stdout)
    if not found["active"]:
        pytest.skip("the C library is not glibc 2.33 or newer")
    before, within_slack, after = found["held"]
    mb = train_memory.MB
    assert before > 150 * mb  # the freed blocks' pages are still held
    assert within_slack > before - 20 * mb
    assert found["trims"] == 1 and after < before - 120 * mb
