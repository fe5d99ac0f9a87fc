"""The user's errors: a leaf that imports nothing, so every floor of the package can raise them."""


class UserError(Exception):
    """Bad input from the user: reported as one line with exit code 2, never as a traceback."""


class CheckFailed(Exception):
    """A run's own exactness check failed (a positive control that must hold by construction): every number
    of the run would be suspect. Reported as one line with exit code 3, and nothing is written."""
