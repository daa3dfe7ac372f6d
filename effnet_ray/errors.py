"""The exceptions a person is told about: a fault they can fix, and a request to stop."""

import signal


class UserError(Exception):
    """A bad argument, input or model file, explained in one line."""


class Terminated(KeyboardInterrupt):
    """A stop signal: the run stops as on Ctrl-C, recording that it was interrupted."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# What `kill`, Kubernetes and `ray job stop` send, and what a closing terminal or ssh session
# sends: without a handler either ends the process before the run records its end.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
