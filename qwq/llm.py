"""qwq.LLM: batched offline generation, shaped like vLLM's offline API."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from qwq.config import EngineConfig
from qwq.errors import QwQError
from qwq.outputs import RequestOutput
from qwq.sampling_params import SamplingParams

Message = dict[str, Any]


class LLM:
    """Load a model once; generate for many prompts or conversations at a time.

    >>> llm = LLM("qwq-demo")
    >>> out = llm.chat([{"role": "user", "content": "2+2?"}], SamplingParams(temperature=0))
    >>> out[0].outputs[0].text
    """

    def __init__(self, model: str | os.PathLike | None = None, *, dtype: str = "auto",
                 quantize: str = "auto", tensor_parallel_size: int = 1, device: str = "auto",
                 max_model_len: int | None = None, max_num_seqs: int = 64,
                 kv_cache_memory: int | None = None, enable_prefix_caching: bool = True,
                 block_size: int = 16, kv_cache_dtype: str = "auto", **engine_options: Any):
        """kv_cache_dtype: auto (the model's dtype), bfloat16, int8 or fp8; the 8-bit ones hold
        twice the tokens in kv_cache_memory."""
        # lazy: `import qwq` stays light; the engine, the weights and torch.distributed load
        # with the first LLM
        from qwq.models import load_engine
        cfg = EngineConfig(block_size=block_size, max_model_len=max_model_len,
                           max_num_seqs=max_num_seqs, kv_cache_memory=kv_cache_memory,
                           enable_prefix_caching=enable_prefix_caching, quantize=quantize,
                           kv_cache_dtype=kv_cache_dtype, **engine_options)
        self.engine, self.tokenizer, self.model_info = load_engine(
            model, dtype=dtype, device=device, engine_config=cfg,
            tensor_parallel_size=tensor_parallel_size)

    def shutdown(self) -> None:
        """Stop the other ranks of a tensor-parallel LLM (they also stop when this process
        exits); a no-op with one rank."""
        from qwq.distributed import shutdown  # lazy: torch.distributed, only to stop ranks
        shutdown(self.engine)

    @property
    def default_system(self) -> str | None:
        return self.model_info.default_system

    def encode_chat(self, messages: list[Message], tools: list[dict] | None = None,
                    add_generation_prompt: bool = True, **template_kwargs: Any) -> list[int]:
        return self.tokenizer.encode_chat(messages, add_generation_prompt=add_generation_prompt,
                                          tools=tools, default_system=self.default_system,
                                          **template_kwargs)

    def generate(self, prompts: str | list[int] | Iterable[str | list[int]],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool | Callable[..., Any] = True) -> list[RequestOutput]:
        """Prompts are text (special tokens recognized) or token id lists. With more than one
        prompt a progress bar shows (use_tqdm=False: none; a callable: it makes the bar,
        taking tqdm's arguments)."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts
                                        and isinstance(prompts[0], int)):
            prompts = [prompts]
        return self._run(list(prompts), sampling_params, use_tqdm)

    def chat(self, messages: list[Message] | list[list[Message]],
             sampling_params: SamplingParams | list[SamplingParams] | None = None,
             tools: list[dict] | None = None, add_generation_prompt: bool = True,
             use_tqdm: bool | Callable[..., Any] = True,
             **template_kwargs: Any) -> list[RequestOutput]:
        """One conversation (a list of messages) or many; message text is never control tokens."""
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        ids = [self.encode_chat(c, tools, add_generation_prompt, **template_kwargs)
               for c in convs]
        return self._run(ids, sampling_params, use_tqdm)

    def stream(self, prompt: str | list[int],
               sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield a RequestOutput each time new text arrives (delta_text on each output)."""
        rid = self.engine.add_request(prompt, sampling_params)
        try:
            while True:
                for out in self.engine.step():
                    if out.request_id == rid:
                        yield out
                        if out.finished:
                            return
        finally:
            if self.engine.is_active(rid):  # the caller stopped reading: free its blocks
                self.engine.abort(rid)
                self._drain()

    def _run(self, prompts: list, params, use_tqdm: bool | Callable[..., Any] = False,
             ) -> list[RequestOutput]:
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise QwQError(f"{len(plist)} sampling params for {len(prompts)} prompts")
        if not use_tqdm or len(prompts) < 2:
            return run_to_completion(self.engine, prompts, plist)
        progress = Progress(len(prompts), use_tqdm)
        try:
            return run_to_completion(self.engine, prompts, plist, progress)
        finally:
            progress.close()

    def _drain(self) -> None:
        self.engine.step()  # applies the aborts


class Progress:
    """vLLM's progress bar over a batch: prompts done, and input / output tokens per second."""

    def __init__(self, total: int, make: bool | Callable[..., Any] = True):
        from tqdm.auto import tqdm
        factory = make if callable(make) else tqdm
        self.bar = factory(total=total, desc="Processed prompts", unit="prompt",
                           dynamic_ncols=True)
        self.tokens_in = self.tokens_out = 0

    def __call__(self, out: RequestOutput) -> bool:
        if out.finished:
            self.tokens_in += len(out.prompt_token_ids)
            self.tokens_out += sum(len(o.token_ids) for o in out.outputs)
            elapsed = max(self.bar.format_dict.get("elapsed", 0.0), 1e-6)
            self.bar.set_postfix_str(f"est. speed input: {self.tokens_in / elapsed:.2f} "
                                     f"toks/s, output: {self.tokens_out / elapsed:.2f} toks/s",
                                     refresh=False)
            self.bar.update(1)
        return False  # it only watches

    def close(self) -> None:
        self.bar.close()


def run_to_completion(engine, prompts: list, params: list,
                      on_output: Callable[[RequestOutput], bool] | None = None,
                      ) -> list[RequestOutput]:
    """Add every prompt, step until all finish; on any error abort what is left.
    on_output sees every output as it comes; when it returns True, that request is stopped."""
    ids: list[str] = []
    done: dict[str, RequestOutput] = {}
    try:
        for p, sp in zip(prompts, params):
            ids.append(engine.add_request(p, sp))
        while len(done) < len(ids):
            for out in engine.step():
                if out.request_id in done:
                    continue
                if out.finished:
                    done[out.request_id] = out
                if on_output is not None and on_output(out) and not out.finished:
                    engine.abort(out.request_id)
    except BaseException:
        for rid in ids:
            if rid not in done:
                engine.abort(rid)
        engine.step()
        raise
    return [done[r] for r in ids]
