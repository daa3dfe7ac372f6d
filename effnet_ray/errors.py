"""The exceptions a person is told about: a fault they can fix, and a request to stop."""


class UserError(Exception):
    """A bad argument, input or model file, explained in one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `kill`, Kubernetes and `ray job stop` send): the run stops as on Ctrl-C,
    recording that it was interrupted."""
