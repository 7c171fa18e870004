"""Structured output and tool calls from reasoning models, on the real demo model served with
QwQ-32B's chat template (its prompt opens `<think>`) and with QwQ-32B-Preview's (plain-text
reasoning that ends in a final-answer heading), through the `openai` client, whole and
streamed: the grammar starts where the answer starts, so the reasoning stays free text and the
JSON or the call lands in `content` / `tool_calls`."""

import json

import pytest
from test_server_support import start_stack

from qwq.chat_template import QWQ_PREVIEW_SYSTEM_PROMPT
from qwq.config import EngineConfig
from qwq.reasoning.controls import ControlFactory

pytestmark = pytest.mark.slow

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
GENERATION_PROMPT = "{{- '<|im_start|>assistant\\n' }}"
SCHEMA = {"type": "object", "required": ["city", "temperature"], "additionalProperties": False,
          "properties": {"city": {"type": "string", "maxLength": 20},
                         "temperature": {"type": "integer"}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
ASK_JSON = [{"role": "user", "content": "What is the weather like in Paris today? "
                                        "Answer in JSON."}]
ASK_TOOL = [{"role": "user", "content": "Do I need an umbrella in Tokyo today?"}]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "required": ["city"], "additionalProperties": False,
                   "properties": {"city": {"enum": ["Paris", "Tokyo", "London"]}}}}}]


def _templates(demo: str) -> dict[str, str]:
    """The two reasoning templates, made from the demo model's own (Qwen2.5's), which they
    extend: QwQ-32B's generation prompt opens `<think>`; QwQ-32B-Preview's default system
    prompt asks for step-by-step thinking."""
    assert GENERATION_PROMPT in demo and QWEN_SYSTEM in demo
    return {"qwq-32b": demo.replace(GENERATION_PROMPT,
                                    "{{- '<|im_start|>assistant\\n<think>\\n' }}"),
            "preview": demo.replace(QWEN_SYSTEM, QWQ_PREVIEW_SYSTEM_PROMPT)}


@pytest.fixture(scope="module", params=["qwq-32b", "preview"])
def stack(request):
    """The demo model behind a server whose chat template is QwQ-32B's or the Preview's."""
    import copy

    from qwq.models import load_engine
    engine, _, _ = load_engine(None, engine_config=EngineConfig(max_model_len=2048,
                                                                kv_cache_memory=64 << 20))
    tokenizer = copy.copy(engine.tokenizer)  # the loaded one is shared in this process
    tokenizer.chat_templates = {"default": _templates(tokenizer.chat_template)[request.param]}
    engine.tokenizer = tokenizer
    engine.control_factory = ControlFactory.for_tokenizer(tokenizer)
    assert engine.control_factory.parser_style == ("think" if request.param == "qwq-32b"
                                                   else "plain")
    s = start_stack(engine, model_name="qwq-demo")
    yield s
    s.close()


def _extra(obj, name):
    return (obj.model_extra or {}).get(name)


def _valid(data: dict) -> bool:
    return set(data) == {"city", "temperature"} and isinstance(data["city"], str) \
        and isinstance(data["temperature"], int)


def _ask(stack, messages, **kw):
    body = {"model": "qwq-demo", "messages": messages, "temperature": 0, "max_tokens": 160, **kw}
    return stack.client().chat.completions.create(**body)


def _warm(stack, messages, **kw):
    """Run the prompt once, so the answers compared next both start from the same prefix-cache
    hits (a prompt computed whole or from cached blocks rounds differently, and greedy text
    can follow the rounding)."""
    _ask(stack, messages, max_tokens=1, **kw)


def _streamed(stack, messages, **kw):
    """(reasoning, content, tool calls merged by index, finish reason) of a streamed answer."""
    reasoning, content, calls, reason = "", "", {}, None
    for chunk in _ask(stack, messages, stream=True, **kw):
        choice = chunk.choices[0]
        reasoning += _extra(choice.delta, "reasoning_content") or ""
        content += choice.delta.content or ""
        for call in choice.delta.tool_calls or []:
            merged = calls.setdefault(call.index, {"name": "", "arguments": ""})
            merged["name"] += call.function.name or ""
            merged["arguments"] += call.function.arguments or ""
        reason = choice.finish_reason or reason
    return reasoning, content, [calls[i] for i in sorted(calls)], reason


def test_json_schema_lands_in_the_content_after_the_reasoning(stack):
    budget = {"max_thinking_tokens": 24, "loop_control": "off"}
    _warm(stack, ASK_JSON)
    m = _ask(stack, ASK_JSON, response_format=FORMAT, extra_body=budget).choices[0].message
    assert _extra(m, "reasoning_content") and m.content not in _extra(m, "reasoning_content")
    assert _valid(json.loads(m.content)), m.content
    reasoning, content, _, reason = _streamed(stack, ASK_JSON, response_format=FORMAT,
                                              extra_body=budget)
    assert (reasoning, content) == (_extra(m, "reasoning_content"), m.content)
    assert reason == "stop"


def test_json_without_a_budget_still_closes_the_reasoning(stack):
    """No budget: where the model would end inside its reasoning, the gate writes the
    style's end of reasoning instead, and the grammar takes over from there."""
    m = _ask(stack, ASK_JSON, response_format=FORMAT, max_tokens=400,
             extra_body={"loop_control": "off"}).choices[0].message
    assert _extra(m, "reasoning_content"), m
    assert _valid(json.loads(m.content)), m.content


def test_forced_tool_call_lands_in_tool_calls(stack):
    ask = {"tools": WEATHER, "tool_choice": "required",
           "extra_body": {"max_thinking_tokens": 24, "loop_control": "off"}}
    _warm(stack, ASK_TOOL, tools=WEATHER)
    choice = _ask(stack, ASK_TOOL, **ask).choices[0]
    assert choice.finish_reason == "tool_calls" and _extra(choice.message, "reasoning_content")
    call = choice.message.tool_calls[0].function
    assert call.name == "get_weather"
    assert json.loads(call.arguments)["city"] in ("Paris", "Tokyo", "London")
    reasoning, content, calls, reason = _streamed(stack, ASK_TOOL, **ask)
    assert reason == "tool_calls" and reasoning == _extra(choice.message, "reasoning_content")
    assert calls == [{"name": call.name, "arguments": call.arguments}]
    assert content.strip() == (choice.message.content or "")
