"""Child processes die with the process that started them.

A ``kill -9`` of a run (or of ``dpo-engine demo``) gives its children no chance to be told, and
a worker busy with a batch, or a training loop, would go on for minutes holding cores and
memory. On Linux the kernel sends a child a signal when its parent dies
(``PR_SET_PDEATHSIG``); elsewhere the children's own checks of their parent remain.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a child process: be killed (SIGKILL) when ``parent`` dies, and leave now if it
    already has (it may die before this call, and then no signal would come)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the parent check below and the callers' own checks remain
    if os.getppid() != parent:
        os._exit(1)
