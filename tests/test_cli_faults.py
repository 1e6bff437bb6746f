"""Issue 34's command-line faults: values out of range or blank, one value spelled twice in a grid, outputs
that cannot be written, providers that are not installed, a Ray address that does not answer. Each is one
line and exit 2 before anything is loaded, trained or written."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from test_bad_input import GOOD, compare_on_good_data, one_line_error, write


def without_data_warnings(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The same data as train and test warns of leakage: those lines are about the data, not the fault."""
    kept = [line for line in result.stderr.splitlines(keepends=True) if not line.startswith("harness: warning: ")]
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, "".join(kept))


def good_data(tmp_path: Path) -> str:
    return f"train={write(tmp_path / 'train.jsonl', GOOD)},test={write(tmp_path / 'test.jsonl', GOOD)}"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--latency-samples", "0"], "--latency-samples: must be at least 1, got 0"),
        (["--parallel", "0"], "--parallel: must be at least 1, got 0"),
        (["--parallel=-2"], "--parallel: must be at least 1, got -2"),
        (["--cpus-per-run=-1"], "--cpus-per-run: must be a number above 0, got -1"),
        (["--cpus-per-run", "nan"], "--cpus-per-run: must be a number above 0, got nan"),
        (["--gpus-per-run=-0.5"], "--gpus-per-run: must be a number of 0 or more, got -0.5"),
        (["--cpus", "0"], "--cpus: must be at least 1, got 0"),
        # Read as their types, 1e-5 and 0.00001 are one value: two rows of one run would show "2/2 seeds", sd 0.
        (
            ["--set", "naive-bayes.smoothing=1e-5,0.00001"],
            "--set: naive-bayes@smoothing=1e-5 and naive-bayes@smoothing=0.00001 are the same settings once read "
            "as their types: give each value once",
        ),
    ],
)
def test_grid_values_out_of_range_or_repeated_are_one_line(cli, tmp_path, extra, expected):
    result = cli(
        "grid",
        "--spec",
        "agnews",
        "--plugins",
        "naive-bayes",
        "--data",
        good_data(tmp_path),
        "--json",
        "out.json",
        *extra,
    )
    assert one_line_error(result, tmp_path) == expected


def test_a_ray_address_that_refuses_is_one_line_at_once(cli, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.perf_counter()
    result = cli(
        "grid",
        "--spec",
        "agnews",
        "--plugins",
        "naive-bayes",
        "--data",
        good_data(tmp_path),
        "--executor",
        "ray",
        "--address",
        f"127.0.0.1:{port}",
        "--json",
        "out.json",
    )
    assert (
        one_line_error(result, tmp_path)
        == f"--address: no Ray cluster answers at 127.0.0.1:{port} (Connection refused)"
    )
    assert time.perf_counter() - start < 30  # Ray's own retries took minutes


def test_a_ray_head_that_accepts_but_never_answers_is_one_line_past_the_deadline():
    from harness import ray_executor
    from harness.errors import UserError

    pytest.importorskip("ray")
    with socket.socket() as silent:  # accepts TCP connections, says nothing: not a Ray head
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.perf_counter()
        with pytest.raises(UserError) as caught:
            ray_executor.start(address, None, connect_seconds=2)
        assert time.perf_counter() - start < 10
    assert str(caught.value) == f"--address: no Ray cluster answered at {address} within 2 s"
    # docs/grid.md names the deadline harness grid uses
    grid_doc = (Path(__file__).parents[1] / "docs" / "grid.md").read_text(encoding="utf-8")
    assert f"within {ray_executor.CONNECT_SECONDS:g} s" in grid_doc.replace("\n", " ")


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--port", "70000"], "--port: must be a TCP port from 1 to 65535, got 70000"),
        (["--text", ""], "--text: is blank: give a text to answer"),
        (["--text", "\u200b \u200d"], "--text: is blank: give a text to answer"),
    ],
)
def test_try_refuses_a_bad_port_or_a_blank_text_before_any_model_loads(cli, tmp_path, extra, expected):
    assert one_line_error(cli("try", "--spec", "agnews", *extra), tmp_path) == expected


def test_report_html_into_a_missing_directory_is_one_line_before_the_table(cli, tmp_path):
    assert compare_on_good_data(cli, tmp_path).returncode == 0
    (tmp_path / "out.json").unlink()
    for target in (tmp_path / "missing" / "page.html", tmp_path / "train.jsonl" / "page.html"):
        result = cli("report", "--html", str(target))
        assert result.returncode == 2 and result.stdout == "", result.stdout
        assert result.stderr == f"harness: error: {target}: directory does not exist\n"
    result = cli("report", "--html", str(tmp_path))
    assert result.stderr == f"harness: error: {tmp_path}: is a directory; --html takes a file path\n"


def test_bench_with_a_provider_that_is_not_installed_is_one_line(cli, tmp_path):
    pytest.importorskip("onnxruntime")
    result = cli(
        "bench",
        "--plugin",
        "bert-onnx",
        "--spec",
        "agnews",
        "--random-weights",
        "--set",
        "bert-onnx.providers=TensorrtExecutionProvider,CPUExecutionProvider",
    )
    error = one_line_error(result, tmp_path)
    assert error.startswith("bert-onnx.providers: TensorrtExecutionProvider not installed; available: "), error
    assert "CPUExecutionProvider" in error


@pytest.mark.parametrize("setting, value", [("min_agreement", "-0.5"), ("max_logit_diff", "-2")])
def test_bert_onnx_parity_bounds_below_zero_are_refused_before_bert_trains(cli, tmp_path, setting, value):
    result = cli(
        "compare",
        "--plugins",
        "bert,bert-onnx",
        "--spec",
        "agnews",
        "--data",
        good_data(tmp_path),
        "--set",
        f"bert-onnx.{setting}={value}",
        "--json",
        "out.json",
    )
    assert one_line_error(without_data_warnings(result), tmp_path) == (
        f"bert-onnx.{setting}: must be -1 (the precision's default) or a number from 0, got {float(value):g}"
    )


def test_seqgpt_field_names_that_do_not_match_the_fields_are_refused_before_the_model_loads(cli, tmp_path):
    record = {
        "text": "Li Lei 13800000000 Beijing",
        "fields": {
            "name": "Li Lei",
            "phone": "13800000000",
            "province": "Beijing",
            "city": "",
            "district": "",
            "specific_location": "",
        },
    }
    data = write(tmp_path / "waybill.jsonl", (json.dumps(record) + "\n") * 20)
    result = cli(
        "compare",
        "--plugins",
        "seqgpt",
        "--spec",
        "waybill",
        "--data",
        f"train={data},test={data}",
        "--set",
        "seqgpt.model=/nowhere/seqgpt",
        "--set",
        "seqgpt.field_names=name,phone",
        "--json",
        "out.json",
    )
    assert one_line_error(without_data_warnings(result), tmp_path) == (
        "seqgpt.field_names: has 2 names for the spec's 6 fields (name, phone, "
        "province, city, district, specific_location)"
    )
