"""The small endpoints and options vLLM users rely on: /tokenize, /detokenize, /version, model
aliases, --chat-template with chat_template_kwargs, assistant prefill and fill-in-the-middle.
Live servers on loopback: the demo model in this process, and `qwq serve` in a child process
(the tiny model) for the command-line options."""

import os
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
import tokenizers
from test_api_support import KEY, MODEL, demo_stack
from test_server_support import served, tiny_model_dir

from qwq.errors import RequestError
from qwq.server.prompts import fim_ids
from qwq.tokenizer import Tokenizer

pytestmark = pytest.mark.slow

stack, _settled = served(lambda: demo_stack(aliases=["qwq", "gpt-4o-mini"]), settle_timeout=60)
USER = [{"role": "user", "content": "Name three colors."}]
AUTH = {"Authorization": f"Bearer {KEY}"}


def post(stack, path, body):
    return httpx.post(stack.url + path, json=body, headers=AUTH, timeout=120)


def test_tokenize_and_detokenize_round_trip(stack):
    tok = stack.engine.tokenizer
    r = post(stack, "/tokenize", {"prompt": "Hello<|im_end|> world", "return_token_strs": True})
    body = r.json()
    assert body["tokens"] == tok.encode("Hello<|im_end|> world", allow_special=True)
    assert tok.token_to_id("<|im_end|>") in body["tokens"]  # written prompts read control tokens
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 2048
    assert body["token_strs"][0] == "Hello"
    chat = post(stack, "/tokenize", {"messages": USER}).json()
    assert chat["tokens"] == tok.encode_chat(USER)
    back = post(stack, "/detokenize", {"tokens": chat["tokens"]}).json()["prompt"]
    assert back == tok.apply_chat_template(USER) and back.endswith("<|im_start|>assistant\n")
    assert httpx.get(stack.url + "/version", headers=AUTH).json()["version"]
    assert post(stack, "/detokenize", {"tokens": [10 ** 9]}).status_code == 400


def test_aliases_are_listed_and_answered_to(stack):
    client = stack.client()
    assert [m.id for m in client.models.list().data] == [MODEL, "qwq", "gpt-4o-mini"]
    r = client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=2)
    assert r.model == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=2)
    assert "'qwq'" in e.value.message


def test_prefill_continues_the_last_assistant_message(stack):
    client = stack.client()
    prefill = [*USER, {"role": "assistant", "content": "1. Red\n2."}]
    kw = {"model": MODEL, "max_tokens": 5, "temperature": 0}
    cont = client.chat.completions.create(messages=prefill, **kw, extra_body={
        "continue_final_message": True, "add_generation_prompt": False})
    same = client.chat.completions.create(messages=prefill, **kw, extra_body={
        "add_generation_prompt": False})
    text = cont.choices[0].message.content
    assert text == same.choices[0].message.content
    prompt = stack.engine.tokenizer.apply_chat_template(prefill, continue_final_message=True)
    assert prompt.endswith("<|im_start|>assistant\n1. Red\n2.")
    raw = client.completions.create(prompt=prompt, **kw).choices[0].text
    assert text == raw and text.strip()  # the answer goes on from "2."
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(messages=USER, **kw,
                                       extra_body={"continue_final_message": True})
    assert e.value.body["param"] == "continue_final_message"


def test_suffix_fills_in_the_middle(stack):
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(2, 3))\n"
    r = stack.client().completions.create(model=MODEL, prompt=prefix, suffix=suffix,
                                          max_tokens=4, temperature=0)
    assert r.choices[0].text.startswith("a + b")
    with pytest.raises(openai.BadRequestError) as e:
        stack.client().completions.create(model=MODEL, prompt=[1, 2, 3], suffix=suffix,
                                          max_tokens=4)
    assert e.value.body["param"] == "prompt"


def test_suffix_without_fim_tokens_is_a_clear_error():
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "</s>": 1},
                                                               unk_token="a"))
    with pytest.raises(RequestError, match="fill-in-the-middle tokens") as e:
        fim_ids(Tokenizer(backend, eos_token="</s>"), "a", "a")
    assert e.value.param == "suffix"


def _serve(*args: str) -> tuple[subprocess.Popen, str]:
    """`qwq serve` on the tiny model in a child process, once it answers /health."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "qwq.cli", "serve", "--model", str(tiny_model_dir()),
           "--dtype", "float32", "--device", "cpu", "--max-model-len", "512",
           "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"qwq serve did not start: {proc.stdout.read().decode()[-2000:]}")


def test_serve_with_aliases_and_a_chat_template(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{{ greeting | default('Hi') }}|{% for m in messages %}"
                        "[{{ m.role }}]{{ m.content }}{% endfor %}"
                        "{% if add_generation_prompt %}[assistant]{% endif %}")
    proc, url = _serve("--served-model-name", "first", "second",
                       "--chat-template", str(template))
    try:
        models = httpx.get(url + "/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["first", "second"]

        def rendered(**extra):
            ids = httpx.post(url + "/tokenize", json={"messages": USER, **extra}).json()
            return httpx.post(url + "/detokenize", json={"tokens": ids["tokens"]}).json()

        assert rendered()["prompt"] == "Hi|[user]Name three colors.[assistant]"
        assert rendered(chat_template_kwargs={"greeting": "Hello"})["prompt"].startswith(
            "Hello|")
        bad = httpx.post(url + "/tokenize", json={"messages": USER, "chat_template_kwargs": {
            "messages": []}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "chat_template_kwargs"
        r = httpx.post(url + "/v1/chat/completions", json={
            "model": "second", "messages": USER, "max_tokens": 3,
            "chat_template_kwargs": {"greeting": "Hello"}}).json()
        assert r["model"] == "second" and r["usage"]["prompt_tokens"] == len(httpx.post(
            url + "/tokenize", json={"messages": USER, "chat_template_kwargs": {
                "greeting": "Hello"}}).json()["tokens"])
    finally:
        proc.kill()
        proc.wait()
