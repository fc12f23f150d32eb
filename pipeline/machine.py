"""What this machine lends a task: the CPUs it may run on.

    >>> usable_cpus() >= 1
    True
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a container or `taskset` narrows), else
    the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
