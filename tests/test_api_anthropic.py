"""Anthropic's Messages API, driven by the real `anthropic` package against a live server on
loopback with the demo model."""

import anthropic
import httpx
import pytest
from test_api_support import KEY, MODEL, WEATHER, demo_stack, thinking
from test_server_support import served

from qwq.server.anthropic import MessagesRequest, to_chat

pytestmark = pytest.mark.slow

stack, _settled = served(demo_stack, settle_timeout=60)
USER = [{"role": "user", "content": "Name three colors."}]
GREEDY = {"temperature": 0, "loop_control": "off"}  # the SDK no longer takes temperature
TOOL = {"name": WEATHER["name"], "description": WEATHER["description"],
        "input_schema": WEATHER["parameters"]}


def client(stack, key=KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=0, timeout=300)


def test_whole_answer_is_the_chat_routes_answer(stack):
    m = client(stack).messages.create(model=MODEL, max_tokens=8, messages=USER,
                                      extra_body=GREEDY)
    chat = stack.client().chat.completions.create(model=MODEL, max_tokens=8, messages=USER,
                                                  extra_body=GREEDY)
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == chat.choices[0].message.content and m.content[0].text.strip()
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 8
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == chat.usage.prompt_tokens
    assert m.role == "assistant" and m.model == MODEL and m.id.startswith("msg_")


def test_streamed_answer_equals_the_whole_one(stack):
    c = client(stack)
    whole = c.messages.create(model=MODEL, max_tokens=8, messages=USER, extra_body=GREEDY)
    with c.messages.stream(model=MODEL, max_tokens=8, messages=USER, extra_body=GREEDY) as s:
        kinds = [event.type for event in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    assert kinds.count("text") > 1  # the text came in pieces
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 8


def test_thinking_blocks_carry_the_reasoning_within_the_budget(stack):
    c = client(stack)
    ask = {"model": MODEL, "max_tokens": 16, "messages": USER, "extra_body": GREEDY,
           "thinking": {"type": "enabled", "budget_tokens": 5}}
    with thinking(stack):
        m = c.messages.create(**ask)
        with c.messages.stream(**ask) as s:
            deltas = [e.delta for e in s if e.type == "content_block_delta"]
        hidden = c.messages.create(**{**ask, "thinking": {"type": "disabled"}, "extra_body": {
            **GREEDY, "max_thinking_tokens": 5}})
    assert [b.type for b in m.content] == ["thinking", "text"]
    reasoning, text = m.content[0].thinking, m.content[1].text
    assert reasoning.strip() and text.strip() and "</think>" not in reasoning + text
    tokens = stack.engine.tokenizer.encode(reasoning)
    assert len(tokens) <= 6  # closed by the budget (a token may split in two when re-encoded)
    streamed = "".join(d.thinking for d in deltas if d.type == "thinking_delta")
    assert streamed == reasoning
    assert "".join(d.text for d in deltas if d.type == "text_delta") == text
    assert [b.type for b in hidden.content] == ["text"] and hidden.content[0].text == text


def test_a_forced_tool_call_comes_back_as_tool_use_and_its_result_goes_in(stack):
    c = client(stack)
    ask = {"model": MODEL, "max_tokens": 40, "tools": [TOOL], "tool_choice": {"type": "any"},
           "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
           "extra_body": GREEDY}
    m = c.messages.create(**ask)
    assert m.stop_reason == "tool_use"
    call = m.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather"
    assert isinstance(call.input["city"], str) and call.id
    with c.messages.stream(**ask) as s:
        streamed = s.get_final_message()
    assert streamed.content[-1].input == call.input and streamed.stop_reason == "tool_use"
    follow = c.messages.create(model=MODEL, max_tokens=6, tools=[TOOL], extra_body=GREEDY,
                               messages=[*ask["messages"],
                                         {"role": "assistant", "content": m.content},
                                         {"role": "user", "content": [{
                                             "type": "tool_result", "tool_use_id": call.id,
                                             "content": "Sunny, 21 C"}]}])
    assert follow.content[0].type == "text" and follow.content[0].text.strip()


def test_tool_results_and_thinking_translate_into_the_chat_request():
    body = MessagesRequest.model_validate({
        "model": MODEL, "max_tokens": 5, "system": [{"type": "text", "text": "Be brief."}],
        "tools": [TOOL], "tool_choice": {"type": "tool", "name": "get_weather"},
        "stop_sequences": ["END"], "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Use the tool.", "signature": "s"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "-3 C"}]},
                {"type": "text", "text": "And now?"}]}]})
    chat = to_chat(body)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool", "user"]
    assistant, tool = chat.messages[2], chat.messages[3]
    assert assistant.reasoning_content == "Use the tool."
    assert assistant.tool_calls[0].function.arguments == '{"city": "Oslo"}'
    assert tool.tool_call_id == "toolu_1" and tool.content == "-3 C"
    assert chat.tool_choice.function.name == "get_weather" and chat.stop == ["END"]
    assert chat.max_thinking_tokens == 1024


def test_prefill_continues_the_assistant_message(stack):
    prefill = "Red, green and"
    m = client(stack).messages.create(
        model=MODEL, max_tokens=6, extra_body=GREEDY,
        messages=[*USER, {"role": "assistant", "content": prefill}])
    chat = stack.client().chat.completions.create(
        model=MODEL, max_tokens=6, messages=[*USER, {"role": "assistant", "content": prefill}],
        extra_body={**GREEDY, "continue_final_message": True, "add_generation_prompt": False})
    text = m.content[0].text
    assert text == chat.choices[0].message.content
    assert not text.startswith(prefill) and text.startswith(" ")  # it goes on from "and"


def test_stop_sequences_end_the_answer(stack):
    c = client(stack)
    whole = c.messages.create(model=MODEL, max_tokens=8, messages=USER, extra_body=GREEDY)
    text = whole.content[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = c.messages.create(model=MODEL, max_tokens=8, messages=USER, extra_body=GREEDY,
                            stop_sequences=[stop])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == text[:text.index(stop)]


def test_errors_come_in_anthropics_shape(stack):
    c = client(stack)
    with pytest.raises(anthropic.NotFoundError) as e:
        c.messages.create(model="claude-x", max_tokens=4, messages=USER)
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError):
        client(stack, "sk-wrong").messages.create(model=MODEL, max_tokens=4, messages=USER)
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "AAAA"}}]}])
    assert "'image'" in e.value.body["error"]["message"]
    raw = httpx.post(stack.url + "/v1/messages", headers={"x-api-key": KEY},
                     json={"model": MODEL, "messages": USER}, timeout=60)
    assert raw.status_code == 400 and raw.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens: Field required"}}


def test_x_api_key_is_accepted_and_tokens_are_counted(stack):
    r = httpx.post(stack.url + "/v1/messages/count_tokens", headers={"x-api-key": KEY},
                   json={"model": MODEL, "messages": USER}, timeout=60)
    ids = stack.engine.tokenizer.encode_chat(USER)
    assert r.status_code == 200 and r.json() == {"input_tokens": len(ids)}
    counted = client(stack).messages.count_tokens(model=MODEL, messages=USER)
    assert counted.input_tokens == len(ids)
