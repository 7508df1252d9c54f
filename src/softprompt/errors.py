"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class SoftpromptError(Exception):
    """A problem the user can fix: the message names the file or field and says what to do."""
