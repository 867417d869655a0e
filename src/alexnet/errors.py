"""Errors that are the user's to fix. The CLI prints them as one line, never as a traceback."""


class UserError(Exception):
    """Bad input from the user: a wrong path, a store from another version, a bad setting."""
