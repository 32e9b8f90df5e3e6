"""The one rule for CPU work on request text: a large request's work leaves the event loop.

The event loop only routes. Parsing, splitting, tokenizing, detection, joining and encoding all grow
with the request, at up to a few hundred nanoseconds per byte of body, so above OFFLOAD_ABOVE_BYTES
(about a millisecond of work) they run in a worker thread and one big request never stalls the others
or /healthz. Below it, nearly every request, the work runs inline: a thread hop costs more than it.
A request is measured once, by its body's bytes (its text has at most as many characters).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

OFFLOAD_ABOVE_BYTES = 4096

T = TypeVar("T")


async def run_sized(size: int, work: Callable[..., T], *args) -> T:
    """`work(*args)`: in a worker thread for a request of over OFFLOAD_ABOVE_BYTES, else inline."""
    if size > OFFLOAD_ABOVE_BYTES:
        return await asyncio.to_thread(work, *args)
    return work(*args)
