"""The transformers-style facade of the model card, over the one engine.

    from qwq import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(name, torch_dtype="auto", device_map="auto")
    tokenizer = AutoTokenizer.from_pretrained(name)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    model_inputs = tokenizer([text], return_tensors="pt").to(model.device)
    generated_ids = model.generate(**model_inputs, max_new_tokens=512)
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch

from qwq.errors import QwQError, UnsafeCheckpointError
from qwq.llm import run_to_completion
from qwq.sampling_params import SamplingParams
from qwq.tokenizer import Tokenizer


class BatchEncoding(dict):
    """input_ids / attention_mask, by key or attribute, movable with .to(device)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: str | torch.device) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if isinstance(v, torch.Tensor) else v
                              for k, v in self.items()})


class QwQTokenizer:
    def __init__(self, tokenizer: Tokenizer, default_system: str | None = None):
        self.tokenizer = tokenizer
        self.default_system = default_system
        self.padding_side = "left"

    eos_token_id = property(lambda self: self.tokenizer.eos_token_id)
    pad_token_id = property(lambda self: self.tokenizer.pad_token_id)
    bos_token_id = property(lambda self: self.tokenizer.bos_token_id)
    vocab_size = property(lambda self: self.tokenizer.vocab_size)
    chat_template = property(lambda self: self.tokenizer.chat_template)

    def __len__(self) -> int:
        return self.tokenizer.vocab_size

    def apply_chat_template(self, messages: list[dict], tokenize: bool = True,
                            add_generation_prompt: bool = False, tools: list | None = None,
                            return_tensors: str | None = None, **kwargs: Any):
        """tokenize=False: the prompt text. tokenize=True: ids, with message text never
        turned into control tokens (unlike tokenizing the rendered text)."""
        if not tokenize:
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tools=tools,
                default_system=self.default_system, **kwargs)
        ids = self.tokenizer.encode_chat(messages, add_generation_prompt=add_generation_prompt,
                                         tools=tools, default_system=self.default_system,
                                         **kwargs)
        return torch.tensor([ids]) if return_tensors == "pt" else ids

    def encode(self, text: str, add_special_tokens: bool = True, **_: Any) -> list[int]:
        return self.tokenizer.encode(text, allow_special=True)

    def __call__(self, text: str | list[str], return_tensors: str | None = None,
                 padding: bool | str = False, **_: Any) -> BatchEncoding:
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.tokenizer.encode(t, allow_special=True) for t in texts]
        if return_tensors != "pt":
            ids = rows[0] if isinstance(text, str) else rows
            mask = [[1] * len(r) for r in rows]
            return BatchEncoding(input_ids=ids, attention_mask=mask[0] if isinstance(text, str)
                                 else mask)
        width = max(len(r) for r in rows)
        pad = self.pad_token_id if self.pad_token_id is not None else self.eos_token_id
        # left padding, as generation wants: every prompt ends at the same column
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return BatchEncoding(input_ids=ids, attention_mask=mask)

    def decode(self, ids, skip_special_tokens: bool = False, **_: Any) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = [ids] if isinstance(ids, int) else list(ids)  # transformers' streamers pass one id
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kw: Any) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]


class QwQForCausalLM:
    """What AutoModelForCausalLM.from_pretrained returns: generate() runs on the engine."""

    def __init__(self, engine, resolved):
        self.engine = engine
        self.name_or_path = resolved.name
        self.config = engine.runner.model.config

    @property
    def device(self) -> torch.device:
        return self.engine.runner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.runner.model.dtype

    def eval(self) -> QwQForCausalLM:
        return self

    def generate(self, input_ids: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int | None = None, do_sample: bool | None = None,
                 temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, min_p: float | None = None,
                 repetition_penalty: float | None = None, num_return_sequences: int = 1,
                 max_length: int | None = None, seed: int | None = None,
                 min_new_tokens: int | None = None, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None, streamer: Any = None,
                 logits_processor: list | None = None, stopping_criteria: list | None = None,
                 inputs: torch.Tensor | None = None, **unused: Any) -> torch.Tensor:
        """(B, L) prompt ids -> (B * num_return_sequences, L + new) ids, right-padded.

        As in transformers: streamer gets the prompt, then each new token, then end();
        logits_processor and stopping_criteria are called per sequence with (1, length) ids
        (stopping criteria get scores=None). Arguments qwq cannot honour raise QwQError."""
        _refuse(unused)
        input_ids = input_ids if input_ids is not None else inputs
        if input_ids is None:
            raise QwQError("generate() needs input_ids")
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        if do_sample is None:
            do_sample = bool(self.engine.generation_config.get("do_sample", False))
        if max_new_tokens is None:
            max_new_tokens = (max_length - input_ids.shape[1]) if max_length else 20
        if streamer is not None and input_ids.shape[0] * num_return_sequences > 1:
            raise QwQError("a streamer takes one sequence: one prompt, num_return_sequences=1")
        params = SamplingParams(
            n=num_return_sequences, max_tokens=max_new_tokens, seed=seed,
            temperature=temperature if do_sample else 0.0, top_p=top_p, top_k=top_k,
            min_p=min_p, repetition_penalty=repetition_penalty, min_tokens=min_new_tokens or 0,
            stop_token_ids=[eos_token_id] if isinstance(eos_token_id, int) else eos_token_id,
            loop_control="off")  # transformers' generate has no loop control: same tokens
        prompts = [row[m.bool()].tolist() for row, m in zip(input_ids.cpu(), mask.cpu())]
        each = [replace(params, logits_processors=[HFProcessors(logits_processor, p)])
                for p in prompts] if logits_processor else [params] * len(prompts)
        watch = _Watch(stopping_criteria, streamer)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        try:
            outs = run_to_completion(self.engine, prompts, each, watch)
        finally:
            if streamer is not None:
                streamer.end()
        rows = [input_ids[i].tolist() + watch.kept(o.request_id, c)
                for i, o in enumerate(outs) for c in o.outputs]
        tok = self.engine.tokenizer
        pad = pad_token_id if pad_token_id is not None else tok.pad_token_id or tok.eos_token_id
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=input_ids.device)


# transformers' generate arguments that ask for nothing beyond plain sampling at these values
_NEUTRAL = {"num_beams": 1, "num_beam_groups": 1, "use_cache": True, "output_scores": False,
            "output_logits": False, "output_attentions": False, "output_hidden_states": False,
            "return_dict_in_generate": False, "synced_gpus": False, "bos_token_id": None}


def _refuse(unused: dict[str, Any]) -> None:
    """A clear error for arguments qwq would otherwise ignore (beams, scores, ...)."""
    bad = sorted(k for k, v in unused.items() if k not in _NEUTRAL or
                 (v is not None and v != _NEUTRAL[k] and k != "bos_token_id"))
    if bad:
        raise QwQError(f"generate() does not support {', '.join(bad)}: qwq samples one token "
                       "at a time (no beam search) and returns token ids only")


class HFProcessors:
    """transformers' logits processors, fn(input_ids (1, L), scores (1, V)) -> scores, as one
    LogitsProcessor for the sequences of one prompt: their input_ids are the prompt and the
    sequence's output so far."""

    def __init__(self, processors: list, prompt_ids: list[int]):
        self.processors = list(processors)
        self.prompt_ids = list(prompt_ids)

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor([self.prompt_ids + output_ids], device=logits.device)
        scores = logits.unsqueeze(0)
        for processor in self.processors:
            scores = processor(ids, scores)
        return scores.squeeze(0)


class _Watch:
    """Sees every engine output of a generate(): feeds new tokens to the streamer and asks the
    stopping criteria after each token; a sequence they stop keeps the token that stopped it."""

    def __init__(self, criteria: list | None, streamer: Any):
        self.criteria = list(criteria or [])
        self.streamer = streamer
        self.seen: dict[tuple[str, int], int] = {}  # tokens looked at, per sequence
        self.cut: dict[tuple[str, int], int] = {}  # tokens kept, per stopped sequence

    def __call__(self, out: Any) -> bool:
        for o in out.outputs:
            key = (out.request_id, o.index)
            start = self.seen.get(key, 0)
            self.seen[key] = len(o.token_ids)
            for k in range(start, len(o.token_ids)):
                if key in self.cut:
                    break
                if self.streamer is not None:
                    self.streamer.put(torch.tensor([o.token_ids[k]]))
                if self._stops(out.prompt_token_ids + o.token_ids[:k + 1]):
                    self.cut[key] = k + 1
        return all((out.request_id, o.index) in self.cut or o.finished for o in out.outputs)

    def _stops(self, ids: list[int]) -> bool:
        if not self.criteria:
            return False
        row = torch.tensor([ids])
        return any(bool(torch.as_tensor(c(row, None)).any()) for c in self.criteria)

    def kept(self, request_id: str, o: Any) -> list[int]:
        return o.token_ids[:self.cut.get((request_id, o.index), len(o.token_ids))]


class AutoTokenizer:
    @staticmethod
    def from_pretrained(name: str | os.PathLike | None = None, **_: Any) -> QwQTokenizer:
        # lazy: `import qwq` stays light; the engine, the weights and torch.distributed load
        # with the first model
        from qwq.models import load_tokenizer
        tokenizer, resolved = load_tokenizer(name)
        return QwQTokenizer(tokenizer, resolved.default_system)


class AutoModelForCausalLM:
    @staticmethod
    def from_pretrained(name: str | os.PathLike | None = None, torch_dtype: Any = "auto",
                        device_map: Any = "auto", trust_remote_code: bool = False,
                        **kwargs: Any) -> QwQForCausalLM:
        """device_map "auto" means the GPU when there is one; trust_remote_code is refused."""
        from qwq.models import load_engine  # lazy: as in AutoTokenizer.from_pretrained
        if trust_remote_code:
            raise UnsafeCheckpointError("trust_remote_code=True is refused: qwq never runs "
                                        "code shipped with a checkpoint")
        device = device_map if isinstance(device_map, str) and device_map != "auto" else "auto"
        engine, _, resolved = load_engine(name, dtype=torch_dtype, device=device)
        return QwQForCausalLM(engine, resolved)
