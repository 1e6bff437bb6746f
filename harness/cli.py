"""The ``harness`` command's parser and dispatch: each command's code is in a module of :mod:`harness.commands`.

Heavy libraries are imported only by the commands that need them, inside their functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from harness import __version__
from harness.commands.bench import cmd_bench
from harness.commands.compare import cmd_compare, cmd_grid
from harness.commands.listing import cmd_plugins, cmd_specs
from harness.commands.report import cmd_report
from harness.commands.store import cmd_store
from harness.commands.tryout import cmd_try
from harness.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line and exit status 2 like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"harness: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="harness",
        description="Train, run and compare small text models on identical data: one table of quality, "
        "training cost, serving speed and memory.",
    )
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    cmp = commands.add_parser("compare", help="train, predict and score approaches on one spec, then print the table")
    cmp.add_argument(
        "--plugins", required=True, help="approaches to compare, by name (see `harness plugins`): bert,qwen"
    )
    cmp.add_argument("--spec", required=True, help="a spec name (see `harness specs`) or a YAML file")
    cmp.add_argument(
        "--data",
        help="local files instead of the spec's dataset: train=PATH,test=PATH[,validation=PATH] (JSONL or CSV)",
    )
    _add_overrides(cmp, "PLUGIN.KEY=VALUE", "override one setting, e.g. bert.num_train_epochs=1 (repeatable)")
    cmp.add_argument(
        "--seeds",
        help="train and measure each approach once per seed, e.g. 0,1,2: the table shows "
        "mean ± sd across them (default: the spec's seeds, else its seed)",
    )
    cmp.add_argument(
        "--teacher",
        help="an approach that labels the train examples first (e.g. openai at an endpoint); "
        "the students train on its labels, cached in the store",
    )
    cmp.add_argument("--limit-train", type=int, help="a stratified sample of N training examples")
    cmp.add_argument("--limit-test", type=int, help="a stratified sample of N test examples")
    cmp.add_argument(
        "--random-weights",
        action="store_true",
        help="build models from their architecture config without weights: speed is real, quality is not",
    )
    cmp.add_argument(
        "--rerun",
        action="store_true",
        help="train and measure again even if the store has a run with the same identity",
    )
    cmp.add_argument(
        "--launcher",
        choices=("process", "inline"),
        default="process",
        help="process (default): train and measure each approach in processes of their own; "
        "inline: in this process, for debugging a plugin",
    )
    cmp.add_argument("--latency-samples", type=int, default=100, help="requests timed one at a time (default 100)")
    cmp.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (each row's fate, steps and estimated cost) and exit: nothing is trained or stored "
        "(a row the store knows no run of its shape for is calibrated by a few timed steps in a temporary directory)",
    )
    cmp.add_argument(
        "--budget",
        help="stop before anything trains when the plan's estimate is over this duration (90s, 15m, 2h, 1h30m)",
    )
    cmp.add_argument("--json", type=Path, help="also write the comparison as JSON to this file")
    cmp.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")
    _add_storage(cmp)
    _add_track(cmp)

    grd = commands.add_parser("grid", help="approaches x settings x seeds x specs as runs, locally or on a Ray cluster")
    grd.add_argument(
        "--spec", dest="specs", action="append", required=True, help="a spec (repeatable: one comparison each)"
    )
    grd.add_argument("--plugins", required=True, help="approaches, by name: bert,qwen")
    grd.add_argument("--seeds", default="0", help="seeds, e.g. 0,1,2 (default 0)")
    _add_overrides(
        grd,
        "PLUGIN.KEY=VALUE[,VALUE...]",
        "a setting, or several values for it: one row per value (bert.learning_rate=1e-5,2e-5)",
    )
    grd.add_argument(
        "--data", help="local files instead of each spec's dataset: train=PATH,test=PATH[,validation=PATH]"
    )
    grd.add_argument("--limit-train", type=int, help="a stratified sample of N training examples")
    grd.add_argument("--limit-test", type=int, help="a stratified sample of N test examples")
    grd.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local (default): runs one after another, a process per unit; ray: each unit a Ray task",
    )
    grd.add_argument(
        "--address",
        help="the Ray cluster to join (auto: the one this machine is part of); default: a local Ray with --cpus CPUs",
    )
    grd.add_argument("--cpus", type=int, help="a local Ray's CPUs (default: this machine's)")
    grd.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each unit asks Ray for (default 1)")
    grd.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each unit asks Ray for (default 0)")
    grd.add_argument("--parallel", type=int, help="runs at once on Ray (default: as many as the grid has)")
    grd.add_argument(
        "--resource",
        dest="resources",
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="a custom Ray resource each unit asks for (repeatable): units run only on nodes started with it",
    )
    grd.add_argument("--random-weights", action="store_true", help="models from their configs: speed only")
    grd.add_argument("--latency-samples", type=int, default=100, help="requests timed one at a time (default 100)")
    grd.add_argument("--json", type=Path, help="also write the comparisons as JSON to this file")
    grd.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")
    _add_storage(grd)
    _add_track(grd)

    bch = commands.add_parser(
        "bench", help="serving speed of one approach: batch sizes, latency, requests/s under load"
    )
    bch.add_argument("--plugin", required=True, help="the approach to measure")
    bch.add_argument("--spec", required=True, help="a spec name or YAML file (its test split is the request sample)")
    source = bch.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a stored run id (from compare --json or report) whose trained model to serve")
    source.add_argument("--random-weights", action="store_true", help="an untrained model built from its config")
    bch.add_argument("--data", help="local files instead of the spec's dataset: train=PATH,test=PATH")
    _add_overrides(bch, "PLUGIN.KEY=VALUE")
    bch.add_argument("--limit-test", type=int, default=256, help="requests sampled from the test split (default 256)")
    bch.add_argument("--batch-sizes", default="1,8,32", help="throughput batch sizes (default 1,8,32)")
    bch.add_argument("--rounds", type=int, default=3, help="timed rounds per batch size; the median is reported")
    bch.add_argument("--latency-samples", type=int, default=50, help="requests timed one at a time (default 50)")
    bch.add_argument("--concurrency", type=int, default=8, help="clients sending requests at once (default 8)")
    bch.add_argument("--requests", type=int, default=200, help="requests sent under load (default 200)")
    bch.add_argument(
        "--max-batch",
        type=int,
        help="the served batch limit (default: --concurrency, the most that "
        "closed-loop clients can fill); each served round follows an offline pass at it",
    )
    bch.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long the oldest waiting request may wait for its batch to fill (default 5)",
    )
    bch.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    bch.add_argument("--store", type=Path, help="results store directory (for --run)")

    rep = commands.add_parser("report", help="re-render a stored comparison (the newest by default)")
    rep.add_argument("comparison_id", nargs="?", help="a comparison id from an earlier compare")
    rep.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN_OR_COMPARISON",
        help="one table from stored runs and comparisons of the same spec and test set (made on other "
        "days, machines or seeds), with the same statistics",
    )
    rep.add_argument(
        "--html",
        type=Path,
        metavar="PATH",
        help="also write one self-contained HTML page: the table, "
        "the statistics, per-class or per-field metrics, plots, settings, hashes and the worst mistakes",
    )
    rep.add_argument("--json", type=Path, help="write the comparison as JSON to this file")
    rep.add_argument("--store", type=Path, help="results store directory")

    sto = commands.add_parser("store", help="look after the results store")
    store_commands = sto.add_subparsers(dest="store_command", required=True, metavar="ACTION", parser_class=_Parser)
    chk = store_commands.add_parser(
        "check",
        help="make the index agree with the run directories: rebuild a corrupt "
        "index, index lost runs, drop runs whose directory or record is gone",
    )
    chk.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")
    chk.add_argument(
        "--remove-partials",
        action="store_true",
        help="also remove runs a killed process left .partial (kept by default: the next compare "
        "with the same training resumes them)",
    )
    gc = store_commands.add_parser("gc", help="remove abandoned work: runs killed and never resumed, data caches")
    gc.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")
    gc.add_argument("--older-than", type=float, metavar="DAYS", help="only what has not changed for DAYS days")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed and the space it frees")
    ls = store_commands.add_parser("ls", help="list stored runs and killed runs that can resume, with their size")
    ls.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")
    ls.add_argument("--json", action="store_true", help="print JSON")

    tr = commands.add_parser(
        "try",
        help="every approach of a stored comparison answering your text, side by side "
        "(a local web page, or --text in the terminal)",
    )
    tr.add_argument("--spec", required=True, help="a spec name or YAML file")
    tr.add_argument("--comparison", help="a stored comparison of the spec (default: its newest)")
    tr.add_argument("--text", help="answer this text in the terminal instead of serving the page")
    _add_overrides(tr, "PLUGIN.KEY=VALUE", "predict settings, e.g. qwen.device=cpu")
    tr.add_argument("--host", default="127.0.0.1", help="the page's address (default 127.0.0.1: this machine only)")
    tr.add_argument("--port", type=int, default=7860)
    tr.add_argument("--share", action="store_true", help="also ask Gradio for a public share link (off by default)")
    tr.add_argument("--store", type=Path, help="results store directory (default: $HARNESS_HOME or .harness)")

    plg = commands.add_parser("plugins", help="list the installed approaches and plugins")
    plg.add_argument("--json", action="store_true", help="print JSON")

    spc = commands.add_parser("specs", help="list the specs found in ./specs and shipped with harness")
    spc.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _add_overrides(parser: argparse.ArgumentParser, metavar: str, help: str | None = None) -> None:
    """``--set``, repeatable: its values collect in ``args.overrides``."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar=metavar, help=help)


def _add_storage(parser: argparse.ArgumentParser) -> None:
    """``--storage URI``: new runs' artifacts apart from the store (harness.storage)."""
    parser.add_argument(
        "--storage",
        help="where new runs' models, checkpoints and predictions go: a directory or an fsspec URL "
        "(s3://bucket/prefix) that every node can reach (default: $HARNESS_STORAGE, else in the store; "
        "credentials from the environment)",
    )


def _add_track(parser: argparse.ArgumentParser) -> None:
    """``--track mlflow``: each run logged to MLflow too (harness.tracking)."""
    parser.add_argument(
        "--track",
        choices=("mlflow",),
        help="also log each run to MLflow: a parent run per comparison, a child per row (the [mlflow] extra; "
        "MLFLOW_TRACKING_URI says where)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {
            "compare": cmd_compare,
            "bench": cmd_bench,
            "report": cmd_report,
            "store": cmd_store,
            "plugins": cmd_plugins,
            "specs": cmd_specs,
            "try": cmd_try,
            "grid": cmd_grid,
        }[args.command](args)
    except UserError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
