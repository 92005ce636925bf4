"""Serving's batching queue (raymlops.serve.batch_queue), on a plain asyncio loop: batches of
at most `max_batch_size`, the wait for a batch to fill, one request's error not reaching the
others, and a request whose client went away not breaking its batch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raymlops.serve.batch_queue import BatchQueue


class Recorder:
    """A `run` that records each batch and answers each item doubled; items that are
    exceptions come back as that item's error, and `gate` (when set) holds the batch."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return [item if isinstance(item, Exception) else item * 2 for item in items]


def test_concurrent_requests_are_batched_up_to_the_maximum_in_order() -> None:
    async def main() -> tuple[list[Any], list[list[Any]]]:
        run = Recorder()
        queue: BatchQueue[Any, Any] = BatchQueue(run, max_batch_size=3)
        results = await asyncio.gather(*(queue.submit(i) for i in range(7)))
        return results, run.batches

    results, batches = asyncio.run(main())
    assert results == [0, 2, 4, 6, 8, 10, 12]
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_requests_queued_while_a_batch_runs_form_the_next_batch() -> None:
    async def main() -> list[list[Any]]:
        run = Recorder()
        run.gate = asyncio.Event()
        queue: BatchQueue[Any, Any] = BatchQueue(run, max_batch_size=32)
        first = asyncio.ensure_future(queue.submit(1))
        await run.started.wait()
        later = [asyncio.ensure_future(queue.submit(i)) for i in (2, 3, 4)]
        await asyncio.sleep(0.01)
        run.gate.set()
        assert await first == 2
        assert await asyncio.gather(*later) == [4, 6, 8]
        return run.batches

    assert asyncio.run(main()) == [[1], [2, 3, 4]]


def test_a_batch_waits_for_more_requests_within_the_timeout() -> None:
    async def main() -> list[list[Any]]:
        run = Recorder()
        queue: BatchQueue[Any, Any] = BatchQueue(run, max_batch_size=2, batch_wait_timeout_s=30)
        first = asyncio.ensure_future(queue.submit(1))
        await asyncio.sleep(0.05)  # the worker holds the batch open for a second request
        assert run.batches == []
        second = asyncio.ensure_future(queue.submit(2))
        # Full at 2: it runs at once, not after the 30 s (a hang guard, not a timing).
        assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [2, 4]
        return run.batches

    assert asyncio.run(main()) == [[1, 2]]


def test_a_batch_that_does_not_fill_runs_when_the_timeout_passes() -> None:
    async def main() -> list[list[Any]]:
        run = Recorder()
        queue: BatchQueue[Any, Any] = BatchQueue(run, max_batch_size=8, batch_wait_timeout_s=0.05)
        assert await asyncio.wait_for(queue.submit(5), 10) == 10
        return run.batches

    assert asyncio.run(main()) == [[5]]


def test_one_requests_error_reaches_that_request_only() -> None:
    async def main() -> list[Any]:
        run = Recorder()
        queue: BatchQueue[Any, Any] = BatchQueue(run, max_batch_size=8)
        bad = ValueError("row 2 is bad")
        out = await asyncio.gather(
            queue.submit(1), queue.submit(bad), queue.submit(3), return_exceptions=True
        )
        assert run.batches == [[1, bad, 3]]
        return out

    first, second, third = asyncio.run(main())
    assert (first, third) == (2, 6)
    assert isinstance(second, ValueError) and str(second) == "row 2 is bad"


def test_a_failing_run_fails_its_batch_and_the_queue_goes_on() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int | BaseException]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("model crashed")
        if len(calls) == 2:
            return [1]  # one result for a batch of two
        return [i * 10 for i in items]

    async def main() -> tuple[list[Any], list[Any], int]:
        queue: BatchQueue[int, int] = BatchQueue(run, max_batch_size=8)
        crashed = await asyncio.gather(queue.submit(1), queue.submit(2), return_exceptions=True)
        short = await asyncio.gather(queue.submit(3), queue.submit(4), return_exceptions=True)
        return crashed, short, await queue.submit(5)

    crashed, short, after = asyncio.run(main())
    assert [type(e) for e in crashed] == [RuntimeError, RuntimeError]
    assert all("model crashed" in str(e) for e in crashed)
    assert [type(e) for e in short] == [RuntimeError, RuntimeError]
    assert "1 results for a batch of 2" in str(short[0])
    assert after == 50
    assert calls == [[1, 2], [3, 4], [5]]


def test_a_run_cancelled_from_inside_fails_its_batch_and_the_queue_goes_on() -> None:
    """`run` awaiting something that gets cancelled (not the worker being stopped): that
    batch's callers get an error, and the next batch runs on the same worker."""

    async def main() -> tuple[str, int]:
        calls = 0

        async def run(items: list[int]) -> list[int]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise asyncio.CancelledError()
            return [i * 2 for i in items]

        queue: BatchQueue[int, int] = BatchQueue(run)
        with pytest.raises(RuntimeError, match="batch cancelled") as failed:
            await queue.submit(1)
        return str(failed.value), await queue.submit(2)

    message, second = asyncio.run(main())
    assert "batch cancelled" in message and second == 4


def test_the_worker_does_not_carry_the_first_callers_context() -> None:
    """Serve keeps the request id in a context variable; the worker runs every caller's
    batch, so it must not see the first caller's values (they would stamp its logs)."""
    import contextvars

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
    seen: list[str] = []

    async def run(items: list[int]) -> list[int]:
        seen.append(request_id.get())
        return items

    async def caller(queue: BatchQueue[int, int], rid: str, item: int) -> int:
        request_id.set(rid)
        return await queue.submit(item)

    async def main() -> None:
        queue: BatchQueue[int, int] = BatchQueue(run)
        await asyncio.create_task(caller(queue, "first", 1))
        await asyncio.create_task(caller(queue, "second", 2))

    asyncio.run(main())
    assert seen == ["-", "-"]


def test_a_request_cancelled_before_its_batch_forms_is_left_out() -> None:
    async def main() -> tuple[list[Any], list[list[Any]]]:
        run = Recorder()
        queue: BatchQueue[Any, Any] = BatchQueue(run, max_batch_size=8)
        tasks = [asyncio.ensure_future(queue.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0)  # each has queued its item; the batch has not formed yet
        tasks[1].cancel()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        return out, run.batches

    out, batches = asyncio.run(main())
    assert out[0] == 2 and out[2] == 6
    assert isinstance(out[1], asyncio.CancelledError)
    assert batches == [[1, 3]]


def test_a_request_cancelled_while_its_batch_runs_does_not_break_the_batch() -> None:
    async def main() -> tuple[Any, Any, int, list[list[Any]]]:
        run = Recorder()
        run.gate = asyncio.Event()
        queue: BatchQueue[Any, Any] = BatchQueue(run, max_batch_size=8)
        gone = asyncio.ensure_future(queue.submit(1))
        stays = asyncio.ensure_future(queue.submit(2))
        await run.started.wait()
        gone.cancel()  # the client went away mid-batch
        await asyncio.sleep(0)
        run.gate.set()
        results = await asyncio.gather(gone, stays, return_exceptions=True)
        run.gate = None
        return results[0], results[1], await queue.submit(3), run.batches

    gone, stays, after, batches = asyncio.run(main())
    assert isinstance(gone, asyncio.CancelledError)
    assert stays == 4
    assert after == 6
    assert batches == [[1, 2], [3]]


@pytest.mark.parametrize(("size", "wait"), [(0, 0.0), (1, -0.1)])
def test_invalid_settings_are_refused(size: int, wait: float) -> None:
    async def run(items: list[int]) -> list[int | BaseException]:
        return items

    with pytest.raises(ValueError):
        BatchQueue(run, max_batch_size=size, batch_wait_timeout_s=wait)
