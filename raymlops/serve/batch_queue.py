"""A small asyncio batching queue: callers `submit` one item each and await its result; a
worker task hands up to `max_batch_size` waiting items at a time to one call of `run`.

Why not Ray Serve's `@serve.batch`: it calls `inspect.signature(...).bind` on every request
and records four Serve metrics and creates two tasks per batch; in a replica under load that
was ~5% of the samples (benchmarks/RESULTS.md, serve_throughput). The semantics kept:

- a batch holds at most `max_batch_size` items; with `batch_wait_timeout_s` > 0 the worker
  waits that long after a batch's first item for more, with 0 it takes what queued while
  the previous batch ran (one event-loop turn, no added latency at low load);
- one batch runs at a time, in the worker task (not in any caller's task), so that a caller
  that is cancelled (its client went away) never cancels the batch of the others: an item
  cancelled before its batch is formed is left out, one cancelled during it gets no result;
- `run` returns one result per item, in order; a result that is an exception is raised in
  that item's caller only; if `run` itself raises (or is cancelled from inside), or returns
  the wrong number of results, every caller of that batch gets the error and the worker
  goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["BatchQueue"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatchQueue(Generic[T, R]):
    """Batches concurrent `submit` calls into calls of `run` (see the module docstring).

    Create it anywhere; its worker task starts on the first `submit`, on that event loop."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R | BaseException]]],
        *,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.0,
        name: str = "batch",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.name = name
        self._waiting: collections.deque[tuple[T, asyncio.Future[R]]] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0  # batches run so far (tests and debugging)

    async def submit(self, item: T) -> R:
        """`item`'s result from the batch it joins; raises its error, if it got one."""
        loop = asyncio.get_running_loop()
        worker = self._worker
        if worker is None or worker.done() or worker.get_loop() is not loop:
            self._arrived = asyncio.Event()
            # A fresh context: the worker serves every caller, so it must not carry the
            # first caller's (Serve's request id would stamp all of its log lines).
            self._worker = loop.create_task(
                self._work(), name=f"raymlops-{self.name}-queue", context=contextvars.Context()
            )
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        assert self._arrived is not None
        self._arrived.set()
        return await future

    def close(self) -> None:
        """Stop the worker; callers still waiting get CancelledError."""
        if self._worker is not None:
            self._worker.cancel()
        while self._waiting:
            self._waiting.popleft()[1].cancel()

    # ------------------------------------------------------------------ internals
    def _fail(self, futures: list[asyncio.Future[R]], exc: BaseException, size: int) -> None:
        """Every caller of a failed batch still waiting gets `exc`."""
        logger.error("raymlops: %s batch of %d failed: %r", self.name, size, exc, exc_info=exc)
        for future in futures:
            if not future.done():
                future.set_exception(exc)

    async def _work(self) -> None:
        arrived = self._arrived
        assert arrived is not None
        waiting = self._waiting
        while True:
            while not waiting:
                arrived.clear()
                await arrived.wait()
            await self._fill(arrived)
            batch: list[T] = []
            futures: list[asyncio.Future[R]] = []
            while waiting and len(batch) < self.max_batch_size:
                item, future = waiting.popleft()
                if future.cancelled():  # its client went away before the batch formed
                    continue
                batch.append(item)
                futures.append(future)
            if batch:
                await self._run_one(batch, futures)

    async def _fill(self, arrived: asyncio.Event) -> None:
        """Let the batch fill: one loop turn (timeout 0), or until it is full or the
        timeout has passed since its first item."""
        timeout = self.batch_wait_timeout_s
        if timeout <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while len(self._waiting) < self.max_batch_size:
            left = until - loop.time()
            if left <= 0:
                return
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), left)
            except asyncio.TimeoutError:
                return

    async def _run_one(self, batch: list[T], futures: list[asyncio.Future[R]]) -> None:
        self.batches += 1
        try:
            results = await self._run(batch)
            if len(results) != len(batch):
                raise RuntimeError(
                    f"{self.name}: {len(results)} results for a batch of {len(batch)}"
                )
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # the worker is stopped: close()
                for future in futures:
                    future.cancel()
                raise
            # `run` was cancelled from inside (something it awaited): this batch's
            # error, not the end of the worker, which goes on with the next batch.
            error: BaseException = RuntimeError(f"{self.name}: batch cancelled ({exc!r})")
            self._fail(futures, error, len(batch))
            return
        except BaseException as exc:  # whatever it is, every caller of the batch is answered
            self._fail(futures, exc, len(batch))
            if not isinstance(exc, Exception):
                raise
            return
        for future, result in zip(futures, results, strict=True):
            if future.done():  # cancelled while the batch ran
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
