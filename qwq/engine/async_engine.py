"""The engine for asyncio callers (the server): one thread steps the engine, each request
gets its outputs through an asyncio queue. Cancelling the consumer aborts the request."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator

from qwq.engine.engine import LLMEngine
from qwq.outputs import RequestOutput
from qwq.sampling_params import SamplingParams

log = logging.getLogger("qwq.engine")


class EngineDeadError(RuntimeError):
    pass


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="qwq-engine", daemon=True)
        self.error: BaseException | None = None
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def num_active(self) -> int:
        return len(self._queues)

    async def generate(self, prompt: str | list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yields outputs as they come; the last has finished=True. Raises RequestError or
        QueueFullError before the first yield when the request is refused."""
        if not self.alive:
            raise EngineDeadError(f"the engine has stopped: {self.error!r}")
        queue: asyncio.Queue = asyncio.Queue()
        rid = request_id or uuid.uuid4().hex
        # registered before the engine can see the request, so no output finds no queue
        self._queues[rid] = (asyncio.get_running_loop(), queue)
        try:
            self.engine.add_request(prompt, params, rid)
        except BaseException:
            self._queues.pop(rid, None)
            raise
        self._wake.set()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._queues.pop(rid, None)
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
                for rid in list(self._queues):
                    self._deliver(rid, EngineDeadError(f"engine step failed: {e!r}"))
                return
            for out in outputs:
                self._deliver(out.request_id, out)

    def _deliver(self, rid: str, item) -> None:
        entry = self._queues.get(rid)
        if entry is None:
            return
        loop, queue = entry
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the caller's loop is gone
            self.engine.abort(rid)

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight requests to finish (SIGTERM); True if all did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queues and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return not self._queues

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

