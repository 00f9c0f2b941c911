"""Errors caused by the user's input: the CLI prints their message as one line, no traceback."""


class UserError(ValueError):
    """Bad input (a config, a file, an argument); the message says what is wrong and how to fix it."""


class Interrupted(Exception):
    """The user stopped a verb (Ctrl-C) after it kept what it had done; the CLI prints the message as one
    line and exits 130 (as shells expect), so that `gencond train ... && gencond forecast ...` stops."""

    EXIT_STATUS = 130
