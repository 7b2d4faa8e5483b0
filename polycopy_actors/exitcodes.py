"""Named process exit codes (the contract in DESIGN.md §3)."""

RET_OK = 0
#: Unexpected internal error (a bug): the traceback is logged.
RET_INTERNAL = 1
#: Bad usage or configuration: the message names the key, file and line.
RET_CONFIG = 2
#: The database was unreachable at start (or stayed down past ``db.give_up_seconds``).
RET_DATABASE = 3
#: The supervisor gave up after its restart intensity was exceeded.
RET_GAVE_UP = 4


class ExitError(Exception):
    """An error that ends the command with a one-line message and a given exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
