"""Errors caused by the user's input: the CLI prints their message as one line, no traceback."""


class UserError(ValueError):
    """Bad input (a config, a file, an argument); the message says what is wrong and how to fix it."""
