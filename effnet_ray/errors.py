"""One exception type for everything the user can fix; the CLI prints it as one line."""


class UserError(Exception):
    """A bad argument, input or model file, explained in one line."""
