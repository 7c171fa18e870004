"""OpenAI's Responses API, driven by the real `openai` package (responses.create and
responses.stream) against a live server on loopback with the demo model."""

import openai
import pytest
from test_api_support import MODEL, WEATHER, demo_stack, thinking
from test_server_support import served

from qwq.server.responses import ResponsesRequest, to_chat

pytestmark = pytest.mark.slow

stack, _settled = served(demo_stack, settle_timeout=60)
ASK = "Name three colors."
YES = "Reply with just the word yes."
GREEDY = {"loop_control": "off"}
TOOL = {"type": "function", **WEATHER}


def create(stack, **kw):
    return stack.client().responses.create(model=MODEL, temperature=0, extra_body=GREEDY, **kw)


def stream(stack, **kw):
    return stack.client().responses.stream(model=MODEL, temperature=0, extra_body=GREEDY, **kw)


def test_text_input_gets_the_chat_routes_answer(stack):
    r = create(stack, input=ASK, max_output_tokens=8, instructions="Answer in English.")
    chat = stack.client().chat.completions.create(
        model=MODEL, max_tokens=8, temperature=0, extra_body=GREEDY,
        messages=[{"role": "system", "content": "Answer in English."},
                  {"role": "user", "content": ASK}])
    assert [o.type for o in r.output] == ["message"]
    assert r.output_text == chat.choices[0].message.content and r.output_text.strip()
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 8 and r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.id.startswith("resp_") and r.store is False


def test_a_finished_answer_streams_to_the_same_final_response(stack):
    whole = create(stack, input=YES, max_output_tokens=16)
    assert whole.status == "completed" and whole.output_text.strip()
    with stream(stack, input=YES, max_output_tokens=16) as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    assert final.output_text == whole.output_text and final.status == "completed"
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_reasoning_comes_as_a_reasoning_item(stack):
    ask = {"input": ASK, "max_output_tokens": 16, "reasoning": {"effort": "low"}}
    extra = {**GREEDY, "max_thinking_tokens": 5}
    with thinking(stack):
        r = stack.client().responses.create(model=MODEL, temperature=0, extra_body=extra, **ask)
        with stack.client().responses.stream(model=MODEL, temperature=0, extra_body=extra,
                                             **ask) as s:
            events = list(s)
    assert [o.type for o in r.output] == ["reasoning", "message"]
    reasoning = r.output[0].content[0].text
    assert reasoning.strip() and r.output_text.strip() and "</think>" not in reasoning
    assert 5 <= r.usage.output_tokens_details.reasoning_tokens < r.usage.output_tokens
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert deltas == reasoning
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == r.output_text
    assert r.reasoning.effort == "low"


def test_a_required_tool_call_is_a_function_call_item(stack):
    ask = {"input": [{"role": "user", "content": "What is the weather in Paris?"}],
           "tools": [TOOL], "tool_choice": "required", "max_output_tokens": 40}
    r = create(stack, **ask)
    call = r.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert r.status == "completed" and '"city"' in call.arguments
    with stream(stack, **ask) as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    assert final.output[-1].arguments == call.arguments
    follow = create(stack, max_output_tokens=6, tools=[TOOL], input=[
        *ask["input"],
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}])
    assert follow.output[-1].type == "message" and follow.output_text.strip()


def test_input_items_translate_into_the_chat_request():
    body = ResponsesRequest.model_validate({"model": MODEL, "instructions": "Be brief.",
                                            "text": {"format": {"type": "json_object"}},
                                            "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "content": [{"type": "reasoning_text", "text": "Use the tool."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "-3 C"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "It is -3 C."}]},
        {"role": "user", "content": "Thanks"}]})
    chat = to_chat(body)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool",
                                               "assistant", "user"]
    assert chat.messages[2].reasoning_content == "Use the tool."
    assert chat.messages[2].tool_calls[0].function.arguments == '{"city": "Oslo"}'
    assert chat.messages[3].tool_call_id == "call_1" and chat.messages[4].content == "It is -3 C."
    assert chat.response_format.type == "json_object"


def test_errors_name_what_is_wrong(stack):
    client = stack.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_1")
    assert "stateless" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}])
    assert "'input_image'" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-x", input="hi")
    with pytest.raises(openai.AuthenticationError):
        stack.client(api_key="sk-wrong").responses.create(model=MODEL, input="hi")
