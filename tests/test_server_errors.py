"""Bad input gets an OpenAI-shaped error with the right status and `param`, and disturbs
nothing else; with API keys set, every route but /health needs one."""

import base64
import json
import socket
import sys

import httpx
import openai
import pytest
from test_server_support import served, start_stack, tiny_model_dir

KEY, OTHER_KEY = "sk-test-1", "sk-test-2"
LIMIT = 64 * 1024
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


stack, _settled = served(lambda: start_stack(api_keys=[KEY, OTHER_KEY], max_body_bytes=LIMIT))


def post(stack, body, path=CHAT, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if not isinstance(body, (dict, list)) else json.dumps(body)
    return httpx.post(stack.url + path, content=content, timeout=60,
                      headers={"Content-Type": "application/json", **headers}, **kw)


def assert_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, err
    return err


ROUTES = [("GET", "/v1/models"), ("GET", "/v1/models/tiny"), ("POST", CHAT),
          ("POST", "/v1/completions"), ("GET", "/metrics"), ("GET", "/"),
          ("GET", "/static/chat.js"), ("GET", "/openapi.json"), ("GET", "/docs"),
          ("GET", "/no/such/route")]


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}",
                                  "Basic !!!", f"Token {KEY}"])
def test_every_route_but_health_needs_a_valid_key(stack, auth):
    headers = {"Authorization": auth} if auth is not None else {}
    for method, path in ROUTES:
        r = httpx.request(method, stack.url + path, headers=headers, json={})
        assert_error(r, 401)
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(stack.url + "/health").status_code == 200
    page = httpx.get(stack.url + "/")
    assert page.headers["www-authenticate"].startswith("Basic")


def test_keys_work_as_bearer_and_as_basic_for_the_page(stack):
    for key in (KEY, OTHER_KEY):
        assert httpx.get(stack.url + "/metrics",
                         headers={"Authorization": f"Bearer {key}"}).status_code == 200
    basic = base64.b64encode(f"me:{KEY}".encode()).decode()
    page = httpx.get(stack.url + "/", headers={"Authorization": f"Basic {basic}"})
    assert page.status_code == 200 and "<title>qwq chat</title>" in page.text


def test_openai_client_with_a_wrong_key_gets_401(stack):
    with pytest.raises(openai.AuthenticationError):
        stack.client(api_key="nope").models.list()


def test_keys_are_compared_in_constant_time(stack, monkeypatch):
    from qwq.server import guard
    calls = []
    real = guard.hmac.compare_digest
    monkeypatch.setattr(guard.hmac, "compare_digest",
                        lambda a, b: calls.append((a, b)) or real(a, b))
    httpx.get(stack.url + "/v1/models", headers={"Authorization": "Bearer guess"})
    assert len(calls) == 2  # every key is compared, each with compare_digest


def test_malformed_json_and_wrong_types(stack):
    assert assert_error(post(stack, b'{"messages": [}'), 400)["code"] == "invalid_json"
    assert_error(post(stack, b"[1, 2]"), 400)
    assert_error(post(stack, b""), 400)
    assert_error(post(stack, {"messages": "hi"}), 400, "messages")
    assert_error(post(stack, {"messages": HI, "temperature": "hot"}), 400, "temperature")
    assert_error(post(stack, {"messages": [{"role": "wizard", "content": "x"}]}), 400,
                 "messages.0.role")
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert_error(post(stack, {"messages": image}), 400, "messages.0.content")


def test_unknown_model_is_404_and_no_file_is_touched(stack):
    opened = []
    active = [True]
    sys.addaudithook(lambda event, args: opened.append(str(args[0]))
                     if active[0] and event == "open" else None)
    names = ["gpt-4", "../../etc/passwd", "/etc/passwd", str(tiny_model_dir()),
             "../" * 20 + "root/.ssh/id_rsa"]
    try:
        for name in names:
            err = assert_error(post(stack, {"model": name, "messages": HI}), 404, "model")
            assert err["code"] == "model_not_found"
            assert_error(post(stack, {"model": name, "prompt": "x"}, "/v1/completions"), 404,
                         "model")
    finally:
        active[0] = False
    assert not [p for p in opened if any(n.strip("./") in p for n in names[1:])]
    with pytest.raises(openai.NotFoundError):
        stack.client().models.retrieve("../../etc/passwd")


def test_prompt_and_max_tokens_beyond_the_context(stack):
    assert_error(post(stack, {"messages": HI, "max_tokens": 500}), 400, "max_tokens")
    assert_error(post(stack, {"messages": HI, "max_completion_tokens": 500}), 400,
                 "max_completion_tokens")
    long = [{"role": "user", "content": "word " * 600}]
    assert_error(post(stack, {"messages": long, "max_tokens": 1}), 400, "messages")
    assert_error(post(stack, {"prompt": "word " * 600}, "/v1/completions"), 400, "prompt")


@pytest.mark.parametrize("field,value", [
    ("n", 0), ("n", 65), ("max_tokens", 0), ("max_tokens", 1 << 30), ("top_logprobs", 21),
    ("temperature", -0.5), ("top_p", 0), ("top_p", 1.5), ("presence_penalty", 3),
    ("seed", -1), ("stop", ["x"] * 5000), ("stop", [""]), ("logit_bias", {"999999": 5}),
    ("logit_bias", {"abc": 5}), ("logit_bias", {"5": 500}), ("min_tokens", 9),
    ("stop_token_ids", [10 ** 7]), ("tool_choice", {"type": "function",
                                                    "function": {"name": "nope"}})])
def test_out_of_range_values_name_their_param(stack, field, value):
    body = {"messages": HI, "max_tokens": 8, "logprobs": True, field: value}
    assert_error(post(stack, body), 400, field)


def test_nan_temperature_and_top_logprobs_without_logprobs(stack):
    assert_error(post(stack, b'{"messages": [{"role": "user", "content": "x"}], '
                             b'"temperature": NaN}'), 400, "temperature")
    assert_error(post(stack, b'{"messages": [{"role": "user", "content": "x"}], '
                             b'"temperature": Infinity}'), 400, "temperature")
    assert_error(post(stack, {"messages": HI, "top_logprobs": 2}), 400, "top_logprobs")
    with pytest.raises(openai.BadRequestError) as e:
        stack.client().chat.completions.create(model="tiny", messages=HI, n=100)
    assert e.value.param == "n"


def test_invalid_json_schema_is_400(stack):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    assert_error(post(stack, {"messages": HI, "response_format": bad}), 400,
                 "response_format.json_schema.schema")
    ref = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}}
    assert_error(post(stack, {"messages": HI, "response_format": ref}), 400,
                 "response_format.json_schema.schema")
    empty = {"type": "json_schema", "json_schema": {"name": "x"}}
    assert_error(post(stack, {"messages": HI, "response_format": empty}), 400,
                 "response_format.json_schema")


def test_body_over_the_limit_is_413_before_parsing(stack):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * LIMIT}]})
    r = post(stack, big)
    assert_error(r, 413)
    assert len(r.content) < 1024

    def chunks():  # no Content-Length: the limit applies to the bytes as they arrive
        for _ in range(4):
            yield b" " * (LIMIT // 2)

    assert_error(post(stack, chunks()), 413)
    # a declared 10 GB body is refused from its headers alone: nothing is read or parsed
    with socket.create_connection(("127.0.0.1", stack.server.port), timeout=10) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
                     .encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")


def test_unknown_route_and_method_are_openai_shaped(stack):
    h = {"Authorization": f"Bearer {KEY}"}
    assert_error(httpx.get(stack.url + "/v1/nothing", headers=h), 404)
    assert_error(httpx.get(stack.url + CHAT, headers=h), 405)


def test_errors_leave_the_server_serving(stack):
    r = stack.client().chat.completions.create(model="tiny", messages=HI, max_tokens=2)
    assert r.usage.completion_tokens == 2


@pytest.mark.parametrize("message,problem", [
    ({"role": "system"}, "a system message needs content"),
    ({"role": "developer", "content": None}, "a developer message needs content"),
    ({"role": "user"}, "a user message needs content"),
    ({"role": "tool", "tool_call_id": "call_1"}, "a tool message needs content"),
    ({"role": "assistant"}, "an assistant message needs content or tool_calls"),
    ({"role": "assistant", "tool_calls": []}, "an assistant message needs content or tool_calls"),
    ({"role": "user", "content": []}, "messages.0.content: ")])
def test_messages_without_content_are_refused_by_role(stack, message, problem):
    before = stack.engine.counters["prompt_tokens"]
    err = assert_error(post(stack, {"messages": [message], "max_tokens": 2}), 400,
                       "messages.0.content")
    assert problem in err["message"]
    assert stack.engine.counters["prompt_tokens"] == before  # nothing ran


def test_an_assistant_turn_of_tool_calls_alone_is_accepted(stack):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": ""}]  # empty content is content, as in OpenAI
    r = stack.client().chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert r.usage.completion_tokens == 2
    with pytest.raises(openai.BadRequestError) as e:
        stack.client().chat.completions.create(model="tiny", messages=[{"role": "system"}])
    assert e.value.body["param"] == "messages.0.content"
