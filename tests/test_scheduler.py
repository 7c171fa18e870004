"""The scheduler alone (plain Python, no model): hand-built sequences, steps simulated as the
engine runs them (computed tokens advance; a finished prefill samples one token)."""

from qwq.config import EngineConfig
from qwq.engine.kv_cache import BlockManager
from qwq.engine.scheduler import Scheduler
from qwq.engine.sequence import Sequence
from qwq.sampling_params import SamplingParams

BUDGET = 512


def make(num_blocks=4096, block_size=16, **config) -> Scheduler:
    cfg = EngineConfig(max_num_batched_tokens=BUDGET, enable_prefix_caching=False, **config)
    return Scheduler(cfg, BlockManager(num_blocks, block_size, False), max_model_len=32768)


_ids = iter(range(1 << 30))


def seq(num_prompt: int) -> Sequence:
    sid = next(_ids)
    return Sequence(sid, f"r{sid}", 0, [5] * num_prompt, SamplingParams(max_tokens=100))


def step(sched: Scheduler) -> dict[int, int]:
    """One step as the engine runs it; returns {seq_id: tokens scheduled}."""
    out = sched.schedule()
    for s, n in zip(out.seqs, out.num_new):
        s.num_computed += n
        if s.num_computed == s.num_tokens:
            s.output_ids.append(7)  # the token sampled at the end of its prompt
    return {s.seq_id: n for s, n in zip(out.seqs, out.num_new)}


def test_a_short_prompt_gets_its_first_token_in_the_step_after_it_arrives():
    sched = make()
    long = seq(12_000)
    sched.add(long)
    step(sched)
    short = seq(30)
    sched.add(short)
    got = step(sched)
    assert got == {long.seq_id: sched.prefill_cap, short.seq_id: 30}
    assert short.output_ids == [7]  # its prompt is done: the first token is out
    assert sum(got.values()) < BUDGET  # a shared step stays short


def test_without_the_cap_the_long_prefill_holds_the_budget():
    sched = make(long_prefill_token_threshold=0)
    long, short = seq(12_000), seq(30)
    sched.add(long)
    step(sched)
    sched.add(short)
    steps = 1
    while not short.output_ids:
        step(sched)
        steps += 1
    # the short prompt waited for the whole prefill: it ran beside its last chunk
    assert steps == -(-12_000 // BUDGET)


def test_a_long_prompt_alone_grows_to_the_whole_budget():
    sched = make()
    long = seq(4_000)
    sched.add(long)
    cap = sched.prefill_cap
    assert [step(sched)[long.seq_id] for _ in range(5)] == [cap, 2 * cap, BUDGET, BUDGET, BUDGET]


def test_the_step_after_others_finish_stays_at_the_cap():
    """Clients send their next request as soon as the last answer ends: the step under way
    then must be a short one, or each new request waits for a whole budget of prefill."""
    sched = make()
    long = seq(12_000)
    sched.add(long)
    for _ in range(4):
        step(sched)  # alone: grown to the budget
    short = seq(30)
    short.params = SamplingParams(max_tokens=2)
    sched.add(short)
    step(sched)  # its prompt and first token, beside a capped chunk
    got = step(sched)  # its second token, the last
    assert got == {long.seq_id: sched.prefill_cap, short.seq_id: 1}
    sched.finish(short)
    assert step(sched) == {long.seq_id: sched.prefill_cap}  # the next request is on its way
    nxt = seq(30)
    sched.add(nxt)
    assert step(sched) == {long.seq_id: sched.prefill_cap, nxt.seq_id: 30}


def test_two_long_prompts_together_fill_the_step():
    sched = make(long_prefill_token_threshold=100)
    a, b = seq(3_000), seq(3_000)
    sched.add(a)
    sched.add(b)
    sizes = [sum(step(sched).values()) for _ in range(4)]
    assert sizes == [200, 200, 400, BUDGET]
    assert all(n >= 100 for n in step(sched).values())


def test_decodes_beside_a_long_prefill_keep_the_step_short():
    sched = make()
    decoders = [seq(10) for _ in range(8)]
    for s in decoders:
        sched.add(s)
    step(sched)  # their prompts: every one now decodes
    long = seq(12_000)
    sched.add(long)
    for _ in range(5):
        got = step(sched)
        assert got[long.seq_id] == sched.prefill_cap
        assert all(got[s.seq_id] == 1 for s in decoders)


def test_new_requests_are_admitted_every_step_beside_long_prefills():
    sched = make()
    for _ in range(3):
        sched.add(seq(12_000))
    step(sched)
    step(sched)
    shorts = []
    for _ in range(4):
        shorts.append(seq(20))
        sched.add(shorts[-1])
        got = step(sched)
        assert got[shorts[-1].seq_id] == 20  # admitted and prefilled in the step it arrived


def test_filling_up_stops_at_the_free_blocks_and_preempts_no_one():
    sched = make(num_blocks=20, block_size=16)  # 320 tokens of KV in all
    a, b = seq(600), seq(600)
    sched.add(a)
    sched.add(b)
    sched._alone_steps = 2  # as after two steps of capped prefills alone: room to grow
    out = sched.schedule()
    got = {s.seq_id: n for s, n in zip(out.seqs, out.num_new)}
    assert got == {a.seq_id: 192, b.seq_id: 128}  # a took the 4 blocks left, b kept its cap
    assert not out.preempted and sched.running == [a, b] and sched.blocks.num_free == 0
