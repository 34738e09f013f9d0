"""The one exception type that reaches the user as a single clear line."""


class CompError(Exception):
    """A problem with the user's input or config: printed as one line, exit code 2.

    The message names the file or key, what is wrong and what to do about it.
    """

    exit_code = 2
