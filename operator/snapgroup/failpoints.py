"""Named points in the protocol where a test can crash or pause the operator on purpose.

Off unless ``SNAPGROUP_FAILPOINTS`` is set, e.g. ``apply:service:postgres=crash`` or
``cut=pause:5``; several are separated by ``;``. ``crash`` is SIGKILL of the operator's own process
(the fault the write-ahead journal exists for); ``pause:N`` holds that step for N seconds (so a
test can drop a connection or restart the API server inside the window); ``fail`` raises
`Injected` there, as a failed step would. The fault-matrix tests
use them to hit every step boundary deterministically; in production the variable is unset and
each point costs one dictionary lookup.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

log = logging.getLogger("snapgroup.failpoints")


class Injected(RuntimeError):
    """The failure a ``fail`` failpoint raises."""

    def __init__(self, point: str) -> None:
        super().__init__(f"failpoint {point}")
        self.point = point


def _parse(text: str) -> dict[str, str]:
    points = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        point, _, action = item.partition("=")
        points[point.strip()] = action.strip() or "crash"
    return points


_POINTS = _parse(os.environ.get("SNAPGROUP_FAILPOINTS", ""))


async def reached(point: str) -> None:
    """Act if a failpoint is armed at this point."""
    action = _POINTS.get(point)
    if action is None:
        return
    log.warning("failpoint %s: %s", point, action)
    if action == "crash":
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "fail":
        raise Injected(point)
    elif action.startswith("pause:"):
        await asyncio.sleep(float(action.removeprefix("pause:")))
