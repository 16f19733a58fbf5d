"""The exceptions the CLIs turn into one line on stderr and an exit code (never a traceback)."""


class UserError(Exception):
    """A mistake in what the user gave (a flag, a file, a field); never a bug in clipa."""

    exit_code = 2


class Interrupted(UserError):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; the message says how to resume.

    Exits 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), the shell's convention."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
