"""The transformers facade keeps its promises: generate() with streamers (qwq's and
transformers' own), logits processors and stopping criteria, and a clear error for what it
cannot do; LLM.generate shows vLLM's progress bar. The demo model, greedy."""

import threading

import pytest
import torch
import transformers
from test_api_support import demo_engine
from test_server_support import tiny_model_dir

from qwq import LLM, SamplingParams, TextIteratorStreamer, TextStreamer
from qwq.compat import QwQForCausalLM, QwQTokenizer
from qwq.errors import QwQError
from qwq.models import resolve

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "Write a haiku about rivers."}]
NEW = 12


@pytest.fixture(scope="module")
def model():
    return QwQForCausalLM(demo_engine(), resolve(None))


@pytest.fixture(scope="module")
def tokenizer():
    return QwQTokenizer(demo_engine().tokenizer)


@pytest.fixture(scope="module")
def inputs(tokenizer):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return tokenizer([text], return_tensors="pt")


@pytest.fixture(scope="module")
def plain(model, inputs):
    """The greedy answer with nothing attached: what every variant below is measured by."""
    return model.generate(**inputs, max_new_tokens=NEW)[0, inputs.input_ids.shape[1]:]


@pytest.mark.parametrize("streamer_class", [TextStreamer, transformers.TextStreamer])
def test_a_text_streamer_prints_the_answer_as_it_comes(model, tokenizer, inputs, plain,
                                                       streamer_class, capsys):
    printed = []
    streamer = streamer_class(tokenizer, skip_prompt=True)
    real = streamer.on_finalized_text
    streamer.on_finalized_text = lambda text, stream_end=False: (
        printed.append(text), real(text, stream_end))
    out = model.generate(**inputs, max_new_tokens=NEW, streamer=streamer)
    assert torch.equal(out[0, inputs.input_ids.shape[1]:], plain)
    answer = tokenizer.decode(plain)
    assert capsys.readouterr().out == answer + "\n"
    assert "".join(printed) == answer and len([p for p in printed if p]) > 2


@pytest.mark.parametrize("streamer_class", [TextIteratorStreamer,
                                            transformers.TextIteratorStreamer])
def test_an_iterator_streamer_feeds_another_thread(model, tokenizer, inputs, plain,
                                                   streamer_class):
    streamer = streamer_class(tokenizer, skip_prompt=True, timeout=300)
    thread = threading.Thread(target=model.generate,
                              kwargs={**inputs, "max_new_tokens": NEW, "streamer": streamer})
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert "".join(pieces) == tokenizer.decode(plain) and len([p for p in pieces if p]) > 2


def test_logits_processors_see_the_context_and_change_the_choice(model, inputs, plain):
    seen = []

    def record(ids, scores):
        seen.append((tuple(ids.shape), tuple(scores.shape), ids[0, -1].item()))
        return scores

    banned = int(plain[0])
    processors = transformers.LogitsProcessorList([
        record, transformers.SuppressTokensLogitsProcessor([banned], device="cpu")])
    out = model.generate(**inputs, max_new_tokens=4, logits_processor=processors)
    new = out[0, inputs.input_ids.shape[1]:].tolist()
    assert new[0] != banned
    length = inputs.input_ids.shape[1]
    assert [s[0] for s in seen] == [(1, length + k) for k in range(4)]
    assert seen[0][1][0] == 1 and seen[0][1][1] >= 151936
    assert [s[2] for s in seen[1:]] == new[:3]  # each call sees the tokens chosen so far


def test_stopping_criteria_end_each_sequence_where_they_fire(model, tokenizer, inputs, plain):
    length = inputs.input_ids.shape[1]
    at_length = transformers.StoppingCriteriaList([
        transformers.MaxLengthCriteria(max_length=length + 3)])
    out = model.generate(**inputs, max_new_tokens=NEW, stopping_criteria=at_length)
    assert out.shape[1] == length + 3 and torch.equal(out[0, length:], plain[:3])

    stop_token = int(plain[5])

    def on_token(ids, scores):
        assert scores is None
        return ids[:, -1] == stop_token

    two = tokenizer([tokenizer.decode(inputs.input_ids[0]), "def fib(n):"], return_tensors="pt")
    both = model.generate(**two, max_new_tokens=NEW, stopping_criteria=[on_token])
    first = both[0, two.input_ids.shape[1]:].tolist()
    assert first[:6] == plain[:6].tolist() and set(first[6:]) == {tokenizer.pad_token_id}


def test_what_generate_cannot_do_is_a_clear_error(model, inputs):
    with pytest.raises(QwQError, match="num_beams"):
        model.generate(**inputs, max_new_tokens=2, num_beams=4)
    with pytest.raises(QwQError, match="output_scores, return_dict_in_generate"):
        model.generate(**inputs, max_new_tokens=2, return_dict_in_generate=True,
                       output_scores=True)
    with pytest.raises(QwQError, match="one sequence"):
        model.generate(**inputs, max_new_tokens=2, num_return_sequences=2,
                       do_sample=True, streamer=TextStreamer(None))
    out = model.generate(**inputs, max_new_tokens=2, num_beams=1, use_cache=True,
                         bos_token_id=151643)  # values that ask for nothing more: accepted
    assert out.shape[1] == inputs.input_ids.shape[1] + 2


def test_llm_generate_shows_a_progress_bar_for_many_prompts(capsys):
    llm = LLM(str(tiny_model_dir()), dtype="float32", device="cpu", max_model_len=512)
    params = SamplingParams(temperature=0, max_tokens=3)
    outs = llm.generate(["one", "two", "three"], params)
    err = capsys.readouterr().err
    assert len(outs) == 3 and "Processed prompts" in err and "3/3" in err
    assert "est. speed input:" in err and "toks/s" in err
    llm.generate(["one", "two"], params, use_tqdm=False)
    llm.generate("one", params)
    assert "Processed prompts" not in capsys.readouterr().err
    made = []

    def bar(**kw):
        from tqdm import tqdm
        made.append(kw["total"])
        return tqdm(**kw, disable=True)

    llm.chat([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], params,
             use_tqdm=bar)
    assert made == [2]
