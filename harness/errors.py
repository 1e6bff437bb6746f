"""Errors a user can fix: the CLI prints them on one line and exits with status 2."""


class UserError(Exception):
    """Bad input: a spec, a data file, a command-line value. The message names the file and place."""

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


def not_utf8(where: object, data: bytes, exc: UnicodeDecodeError) -> UserError:
    """The line and file offset of the first byte of ``data`` (a whole file) that is not UTF-8."""
    line = data.count(b"\n", 0, exc.start) + 1
    return UserError(
        f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start} of the file)", where=f"{where}:{line}"
    )
