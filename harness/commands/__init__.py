"""The ``harness`` command's commands, a module per job: :mod:`harness.cli` parses the line and calls them."""
