"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class OvclipError(Exception):
    """A user-facing error: what is wrong, with which file, what to do."""
