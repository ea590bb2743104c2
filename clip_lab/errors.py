"""The one exception type for problems the user can fix; `python -m clip_lab` prints it as a single line."""


class ClipLabError(RuntimeError):
    """Bad input, missing files or weights: the message names what is wrong and how to fix it."""
