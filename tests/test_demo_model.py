"""The real demo model (Qwen2.5-Coder-0.5B-Instruct, GGUF) against transformers, and the
model card's API run as written."""

import pytest
import torch

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "How many r in strawberry?"}],
    [{"role": "user", "content": "用一句话解释什么是递归。"}],
    [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name three planets."}],
    [{"role": "user", "content": "Explain the difference between a list and a tuple."}],
]


@pytest.fixture(scope="module")
def llm32():
    from qwq import LLM
    return LLM("qwq-demo", dtype="float32")


@pytest.fixture(scope="module")
def reference(demo_gguf):
    """transformers' Qwen2ForCausalLM holding the demo weights (float32). The dequantized
    tensors are checked bit-identical to transformers' own GGUF loader in
    test_weights_gguf.py, so here we skip its slow loader."""
    pytest.importorskip("transformers")
    from qwq.benchmark import transformers_model
    return transformers_model(demo_gguf, dtype=torch.float32)


def test_greedy_continuations_match_transformers(llm32, reference):
    """64 greedy tokens per prompt equal transformers' greedy choice at every step: with the
    same prefix at each position its argmax is our token, so its greedy run is ours."""
    from qwq import SamplingParams
    ids = [llm32.encode_chat(m) for m in PROMPTS]
    ours = llm32.generate(ids, SamplingParams(temperature=0, max_tokens=64, min_tokens=64,
                                               loop_control="off"))
    eos = list(llm32.tokenizer.eos_token_ids)
    for prompt_ids, out in zip(ids, ours):
        new = out.outputs[0].token_ids
        assert len(new) == 64
        with torch.no_grad():
            logits = reference(torch.tensor([prompt_ids + new])).logits[0]
        logits[:, eos] = float("-inf")  # as min_tokens does: no end before 64 tokens
        want = logits[len(prompt_ids) - 1: -1].argmax(-1)
        assert new == want.tolist()


def test_batch_of_eight_equals_each_alone(llm32):
    """In float32: in bfloat16 a batch changes matmul blocking, which can flip near-ties."""
    from qwq import SamplingParams
    llm = llm32
    prompts = ["Hi!", "What is 2+2?", "写一首关于秋天的短诗", "def fib(n):",
               "List three colors.", "Translate 'cat' to French.", "Why is the sky blue?",
               "Say hello in JSON."]
    params = SamplingParams(temperature=0, max_tokens=16)
    together = [o.outputs[0].token_ids for o in llm.chat([[{"role": "user", "content": p}]
                                                          for p in prompts], params)]
    alone = [llm.chat([{"role": "user", "content": p}], params)[0].outputs[0].token_ids
             for p in prompts]
    assert together == alone


def test_model_card_api_as_written(capsys):
    from qwq import AutoModelForCausalLM, AutoTokenizer
    model_name = "qwq-demo"
    model = AutoModelForCausalLM.from_pretrained(model_name, torch_dtype="auto",
                                                 device_map="auto")
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    prompt = "How many r in strawberry."
    messages = [
        {"role": "system", "content": "You are a helpful and harmless assistant. You are Qwen "
                                      "developed by Alibaba. You should think step-by-step."},
        {"role": "user", "content": prompt},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    model_inputs = tokenizer([text], return_tensors="pt").to(model.device)
    generated_ids = model.generate(**model_inputs, max_new_tokens=96)
    generated_ids = [output_ids[len(input_ids):] for input_ids, output_ids
                     in zip(model_inputs.input_ids, generated_ids)]
    response = tokenizer.batch_decode(generated_ids, skip_special_tokens=True)[0]
    print(response)
    assert "<|im_start|>" in text and text.endswith("<|im_start|>assistant\n")
    assert "strawberry" in response.lower()  # greedy: it answers about the word asked
    assert len(response.split()) > 5


def test_serving_never_imports_the_compiler():
    """Loading the demo model and generating must not import torch._dynamo: it holds ~140 MiB
    resident (triton's library alone 64) in a process that never compiles. Building the model
    on the meta device used to, through nn.Embedding's init and the rotary table."""
    import subprocess
    import sys
    code = ("import sys; from qwq import LLM, SamplingParams; llm = LLM('qwq-demo'); "
            "out = llm.generate(['Say hi.'], SamplingParams(temperature=0, max_tokens=4)); "
            "assert out[0].outputs[0].token_ids; "
            "print(sorted(m for m in ('torch._dynamo', 'triton') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"
