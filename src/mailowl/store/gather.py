"""Letting a batch form before a task that serves many requests with one statement runs it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: loop turns a batch may wait for requests that are already running to join it
TURNS = 4


async def gather(queued: Callable[[], int], turns: int = TURNS) -> None:
    """Let the requests that are already running reach the queue first: a few event-loop turns, as long
    as each brings more, never a fixed wait. Without it a statement that answers at once (SQLite on the
    event loop) or a busy loop (several instances sharing the cores) runs batches of one or two, whose
    fixed cost per statement then weighs on every request."""
    count = -1
    for _ in range(turns):
        if queued() == count:
            return  # a turn brought nothing new
        count = queued()
        await asyncio.sleep(0)
