"""Ollama's API, driven by the real `ollama` package against a live server on loopback with the
demo model."""

import json

import httpx
import ollama
import pytest
from test_api_support import KEY, MODEL, WEATHER, demo_stack, thinking
from test_server_support import served

pytestmark = pytest.mark.slow

stack, _settled = served(demo_stack, settle_timeout=60)
USER = [{"role": "user", "content": "Name three colors."}]
GREEDY = {"temperature": 0, "loop_control": "off"}


def client(stack, key=KEY) -> ollama.Client:
    return ollama.Client(host=stack.url, headers={"Authorization": f"Bearer {key}"},
                         timeout=300)


def test_chat_answer_is_the_chat_routes_answer(stack):
    r = client(stack).chat(model=MODEL, messages=USER, options={**GREEDY, "num_predict": 8})
    chat = stack.client().chat.completions.create(model=MODEL, messages=USER, max_tokens=8,
                                                  temperature=0, extra_body=GREEDY)
    assert r.message.content == chat.choices[0].message.content and r.message.content.strip()
    assert r.done and r.done_reason == "length" and r.eval_count == 8
    assert r.prompt_eval_count == chat.usage.prompt_tokens
    assert r.total_duration >= r.prompt_eval_duration > 0 and r.eval_duration > 0


def test_streamed_chat_is_ndjson_that_adds_up_to_the_whole_answer(stack):
    c = client(stack)
    ask = {"model": f"{MODEL}:latest", "messages": USER, "options": {**GREEDY, "num_predict": 8}}
    whole = c.chat(**ask)
    parts = list(c.chat(**ask, stream=True))
    assert len(parts) > 2 and [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 8
    assert whole.model == f"{MODEL}:latest"


def test_generate_uses_the_template_unless_raw(stack):
    c = client(stack)
    options = {**GREEDY, "num_predict": 6}
    templated = c.generate(model=MODEL, prompt=USER[0]["content"], options=options)
    chat = c.chat(model=MODEL, messages=USER, options=options)
    assert templated.response == chat.message.content
    raw = c.generate(model=MODEL, prompt="The capital of France is", raw=True, options=options)
    completion = stack.client().completions.create(model=MODEL, prompt="The capital of France is",
                                                   max_tokens=6, temperature=0,
                                                   extra_body={"loop_control": "off"})
    assert raw.response == completion.choices[0].text and raw.response.strip()
    streamed = "".join(p.response for p in c.generate(model=MODEL, prompt="The capital of "
                                                      "France is", raw=True, options=options,
                                                      stream=True))
    assert streamed == raw.response


def test_think_returns_the_reasoning_as_thinking(stack):
    c = client(stack)
    options = {**GREEDY, "num_predict": 16, "max_thinking_tokens": 5}
    with thinking(stack):
        r = c.chat(model=MODEL, messages=USER, options=options, think=True)
        parts = list(c.chat(model=MODEL, messages=USER, options=options, think=True,
                            stream=True))
        hidden = c.chat(model=MODEL, messages=USER, options=options, think=False)
        generated = c.generate(model=MODEL, prompt=USER[0]["content"], options=options,
                               think=True)
    assert r.message.thinking.strip() and r.message.content.strip()
    assert "</think>" not in r.message.thinking + r.message.content
    assert "".join(p.message.thinking or "" for p in parts) == r.message.thinking
    assert "".join(p.message.content for p in parts) == r.message.content
    assert hidden.message.thinking is None and hidden.message.content == r.message.content
    assert generated.thinking == r.message.thinking and generated.response == r.message.content


def test_format_schema_constrains_the_answer(stack):
    schema = {"type": "object", "properties": {"color": {"type": "string"}},
              "required": ["color"]}
    r = client(stack).chat(model=MODEL, format=schema, options={**GREEDY, "num_predict": 30},
                           messages=[{"role": "user", "content": "Name one color as JSON."}])
    assert r.done_reason == "stop"
    assert isinstance(json.loads(r.message.content)["color"], str)


def test_a_tool_call_and_its_result(stack):
    c = client(stack)
    ask = {"model": MODEL, "tools": [{"type": "function", "function": WEATHER}],
           "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
           "options": {**GREEDY, "num_predict": 40, "tool_choice": "required"}}
    r = c.chat(**ask)
    call = r.message.tool_calls[0].function
    assert call.name == "get_weather" and isinstance(call.arguments["city"], str)
    streamed = [p for p in c.chat(**ask, stream=True) if p.message.tool_calls]
    assert streamed[0].message.tool_calls[0].function.arguments == call.arguments
    follow = c.chat(model=MODEL, tools=ask["tools"], options={**GREEDY, "num_predict": 6},
                    messages=[*ask["messages"],
                              {"role": "assistant", "content": "", "tool_calls": [
                                  {"function": {"name": call.name, "arguments": call.arguments}}]},
                              {"role": "tool", "content": "Sunny, 21 C",
                               "tool_name": "get_weather"}])
    assert follow.message.content.strip() and not follow.message.tool_calls


def test_the_model_is_listed_shown_and_loaded(stack):
    c = client(stack)
    [model] = c.list().models
    assert model.model == f"{MODEL}:latest" and model.size > 100e6
    # 2 x 136M (embedding and output head, untied in this GGUF) + 358M in the layers
    assert model.details.family == "qwen2" and model.details.parameter_size == "630M"
    shown = c.show(MODEL)
    assert {"completion", "tools", "insert"} <= set(shown.capabilities)
    assert shown.modelinfo["qwen2.block_count"] == 24 and "<|im_start|>" in shown.template
    [loaded] = c.ps().models
    assert loaded.model == f"{MODEL}:latest" and loaded.size == model.size
    version = httpx.get(stack.url + "/api/version", headers={"Authorization": f"Bearer {KEY}"})
    assert version.json()["version"].count(".") == 2


def test_errors_are_ollama_shaped(stack):
    c = client(stack)
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="llama3", messages=USER)
    assert e.value.status_code == 404 and "llama3" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client(stack, "sk-wrong").chat(model=MODEL, messages=USER)
    assert e.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model=MODEL, messages=[{"role": "user", "content": "what is this?",
                                       "images": ["aGVsbG8="]}])
    assert e.value.status_code == 400 and "images" in e.value.error
    raw = httpx.post(stack.url + "/api/generate", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": MODEL, "prompt": "hi", "context": [1, 2]})
    assert raw.status_code == 400 and set(raw.json()) == {"error"}
