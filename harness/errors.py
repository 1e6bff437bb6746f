"""Errors a user can fix: the CLI prints them on one line and exits with status 2."""


class UserError(Exception):
    """Bad input: a spec, a data file, a command-line value. The message names the file and place."""

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
