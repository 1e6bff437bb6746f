"""``harness try``: every approach of a stored comparison answering a text, side by side."""

from __future__ import annotations

import argparse

from harness.commands.output import make_console
from harness.errors import UserError


def cmd_try(args: argparse.Namespace) -> int:
    from harness.data_rows import is_blank
    from harness.plugins import load_plugins
    from harness.settings import parse_overrides
    from harness.spec import load_spec
    from harness.store import Store
    from harness.tryout import answer_all, gradio_module, load_rows, page, terminal_table

    if args.text is not None and is_blank(args.text):
        raise UserError("is blank: give a text to answer", where="--text")
    if not 1 <= args.port <= 65535:
        raise UserError(f"must be a TCP port from 1 to 65535, got {args.port}", where="--port")
    plugins = load_plugins()
    spec = load_spec(args.spec)
    if args.text is None:
        gradio_module()  # the extra's one line before minutes of loading models
    comparison_id, rows = load_rows(plugins, spec, Store(args.store), args.comparison, parse_overrides(args.overrides))
    console = make_console()
    if args.text is not None:
        console.print(terminal_table(answer_all(plugins, rows, args.text), args.text))
        return 0
    demo = page(plugins, rows, spec, comparison_id)
    console.print(f"harness try: {', '.join(row.name for row in rows)} of comparison {comparison_id}")
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, inbrowser=False, show_error=True, quiet=False
    )
    return 0
