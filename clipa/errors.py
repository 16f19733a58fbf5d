"""The one exception type for user mistakes: the CLIs print its message on one line and exit 2."""


class UserError(Exception):
    """A mistake in what the user gave (a flag, a file, a field); never a bug in clipa."""

    exit_code = 2
