"""The user's errors: a leaf that imports nothing, so every floor of the package can raise them."""


class UserError(Exception):
    """Bad input from the user: reported as one line with exit code 2, never as a traceback."""
