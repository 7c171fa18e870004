"""The engine for asyncio callers (the server): one thread steps the engine, each request gets
its outputs through a collector on the caller's event loop. Cancelling the consumer aborts the
request.

The engine thread must keep the speed the engine has offline, so the serving path is built to
take as little from it as it can:

- It is the only thread that computes. The thread that loaded the model hands its OpenMP
  workers back (qwq.engine.threads): two OpenMP teams in one process make libgomp stop
  spinning at its barriers once it manages more threads than there are cores, and every
  parallel region of a step then waits on a futex wake-up (a third of the decode rate on a
  2-core machine).
- Outputs go to each event loop once per step, all of that step's outputs in one call, not
  one wake-up per request.
- A consumer that falls behind finds one merged output, not a backlog: text and token deltas
  of the outputs it has not read yet are joined (vLLM v1's RequestOutputCollector), so a slow
  client or a busy loop costs fewer sends, never more work.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator

from qwq.engine.engine import LLMEngine
from qwq.engine.threads import release_openmp_workers
from qwq.outputs import RequestOutput, merge_outputs
from qwq.sampling_params import SamplingParams

log = logging.getLogger("qwq.engine")


class EngineDeadError(RuntimeError):
    pass


class _Collector:
    """One request's outputs, waiting for its consumer. Touched only on its event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.item: RequestOutput | BaseException | None = None
        self.ready = asyncio.Event()

    def put(self, item: RequestOutput | BaseException) -> None:
        if isinstance(self.item, RequestOutput) and isinstance(item, RequestOutput):
            item = merge_outputs(self.item, item)
        elif isinstance(self.item, BaseException):
            return  # an error stays the last word
        self.item = item
        self.ready.set()

    async def get(self) -> RequestOutput | BaseException:
        await self.ready.wait()
        item, self.item = self.item, None
        self.ready.clear()
        return item


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._collectors: dict[str, _Collector] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="qwq-engine", daemon=True)
        self.error: BaseException | None = None
        # this thread built the engine; from now on the engine thread computes alone
        release_openmp_workers()
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def num_active(self) -> int:
        return len(self._collectors)

    async def generate(self, prompt: str | list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yields outputs as they come (those the caller had not read yet arrive merged);
        the last has finished=True. Raises RequestError or QueueFullError before the first
        yield when the request is refused."""
        if not self.alive:
            raise EngineDeadError(f"the engine has stopped: {self.error!r}")
        collector = _Collector(asyncio.get_running_loop())
        rid = request_id or uuid.uuid4().hex
        # registered before the engine can see the request, so no output finds no collector
        self._collectors[rid] = collector
        try:
            self.engine.add_request(prompt, params, rid)
        except BaseException:
            self._collectors.pop(rid, None)
            raise
        self._wake.set()
        finished = False
        try:
            while True:
                item = await collector.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._collectors.pop(rid, None)
            if not finished:
                self.engine.abort(rid)
                self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.engine.has_unfinished():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except BaseException as e:  # a bug in a step: fail everyone loudly, stop stepping
                log.exception("engine step failed")
                self.error = e
                dead = EngineDeadError(f"engine step failed: {e!r}")
                self._deliver([(rid, dead) for rid in list(self._collectors)])
                return
            self._deliver([(out.request_id, out) for out in outputs])

    def _deliver(self, items: list[tuple[str, RequestOutput | BaseException]]) -> None:
        """Hand a step's outputs to their event loops: one call per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for rid, item in items:
            collector = self._collectors.get(rid)
            if collector is not None:
                by_loop.setdefault(collector.loop, []).append((rid, collector, item))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # the caller's loop is gone
                for rid, _, _ in batch:
                    self.engine.abort(rid)

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight requests to finish (SIGTERM); True if all did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._collectors and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return not self._collectors

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)


def _put_all(batch: list[tuple[str, _Collector, RequestOutput | BaseException]]) -> None:
    for _, collector, item in batch:
        collector.put(item)
