"""Faults where the output lives, as the run reports them: what failed, in words, and where.

A commit that fails in an actor raises `OutputFailed`, whose message is the whole story
("output s3://b/out: no space left on the device"); it crosses Ray's task errors intact, so the
driver stops the run with that one line and how to resume, while the chain behind it stays in
Ray's logs and under --debug.
"""

from __future__ import annotations


class OutputFailed(Exception):
    """Writing to the output failed in a way a retry does not mend."""
