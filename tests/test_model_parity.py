"""Our Qwen2 against transformers' Qwen2ForCausalLM on a tiny random config, in float32:
prefill, chunked prefill and decode steps over the paged cache, batched with mixed lengths."""

import pytest
import torch

from qwq.config import EngineConfig, ModelConfig
from qwq.engine.kv_cache import BlockManager
from qwq.engine.runner import ModelRunner
from qwq.engine.scheduler import Scheduler
from qwq.engine.sequence import Sequence
from qwq.model import Qwen2Model
from qwq.sampling_params import SamplingParams

transformers = pytest.importorskip("transformers")


def reference_model(cfg: ModelConfig):
    hf_cfg = transformers.Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                         if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = "eager"
    ref = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # random biases, so the q/k/v bias path is exercised
        for name, p in ref.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0, 0.5)
    return ref


def ours_from(ref, cfg: ModelConfig) -> Qwen2Model:
    model = Qwen2Model(cfg).eval()
    model.load_weights(ref.state_dict().items())
    return model


def run_steps(model, prompts, decode_steps, engine_cfg, next_tokens):
    """Drive scheduler+runner; returns per-sequence list of logits rows, one per sampled step."""
    blocks = BlockManager(64, engine_cfg.block_size, enable_prefix_caching=False)
    sched = Scheduler(engine_cfg, blocks)
    runner = ModelRunner(model, 64, engine_cfg.block_size, torch.float32)
    seqs = [Sequence(i, str(i), 0, list(p), SamplingParams(temperature=0)) for i, p in
            enumerate(prompts)]
    for s in seqs:
        sched.add(s)
    logits_of = {s.seq_id: [] for s in seqs}
    while any(len(v) < decode_steps + 1 for v in logits_of.values()):
        batch = sched.schedule()
        ids, meta, sampled = runner.prepare(batch)
        with torch.no_grad():
            logits = model(ids, meta, runner.kv)
        for s, n in zip(batch.seqs, batch.num_new):
            s.num_computed += n
        for row, s in zip(logits, sampled):
            logits_of[s.seq_id].append(row)
            if len(logits_of[s.seq_id]) == decode_steps + 1:
                sched.finish(s)
            else:
                s.output_ids.append(next_tokens[s.seq_id][len(s.output_ids)])
    return seqs, logits_of


@pytest.mark.parametrize("budget", [256, 5])  # 5 forces chunked prefill mixed with decodes
def test_logits_match_transformers_through_prefill_and_decode(tiny_config, budget):
    ref = reference_model(tiny_config)
    model = ours_from(ref, tiny_config)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 320, (n,), generator=gen).tolist() for n in (7, 19, 1, 33)]
    steps = 6
    nxt = {i: torch.randint(0, 320, (steps + 1,), generator=gen).tolist() for i in range(4)}
    cfg = EngineConfig(block_size=4, max_num_batched_tokens=budget)
    seqs, got = run_steps(model, prompts, steps, cfg, nxt)
    for s in seqs:
        full = torch.tensor([s.prompt_ids + nxt[s.seq_id][:steps]])
        with torch.no_grad():
            want = ref(full).logits[0, len(s.prompt_ids) - 1:]
        ours = torch.stack(got[s.seq_id][:steps + 1])
        assert (ours - want).abs().max().item() < 1e-4


def test_tied_embeddings_share_the_output_head(tiny_config):
    cfg = tiny_config.replace(tie_word_embeddings=True)
    ref = reference_model(cfg)
    model = ours_from(ref, cfg)
    assert model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()
    seqs, got = run_steps(model, [[5, 6, 7, 8, 9]], 0,
                          EngineConfig(block_size=4, max_num_batched_tokens=512), {0: [1]})
    with torch.no_grad():
        want = ref(torch.tensor([[5, 6, 7, 8, 9]])).logits[0, -1]
    assert (got[0][0] - want).abs().max().item() < 1e-4


def test_yarn_frequencies_match_transformers(tiny_config):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from qwq.model.rope import RotaryEmbedding
    rs = {"type": "yarn", "rope_type": "yarn", "factor": 4.0,
          "original_max_position_embeddings": 128}
    cfg = tiny_config.replace(rope_scaling=rs)
    hf_cfg = transformers.Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                         if k not in ("architectures", "model_type")})
    inv_freq, scale = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg, "cpu")
    rope = RotaryEmbedding(cfg)
    assert torch.allclose(rope.inv_freq, inv_freq.float(), atol=1e-6)
    assert abs(rope.scale - scale) < 1e-6
    assert cfg.context_length == 512


def test_wrong_shape_is_named(tiny_config):
    from qwq.errors import CheckpointError
    model = Qwen2Model(tiny_config)
    bad = [("model.norm.weight", torch.ones(3))]
    with pytest.raises(CheckpointError, match="model.norm.weight"):
        model.load_weights(bad)
