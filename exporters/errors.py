"""The one error type export and repository writing raise for a user's mistake."""


class ExportError(Exception):
    """A problem with the user's source, options or data, said in one line that names the fix."""
