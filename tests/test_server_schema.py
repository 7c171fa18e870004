"""Schemathesis over the server's own OpenAPI spec: valid and invalid bodies for every
operation; none may get a 5xx, and the engine must be intact after each operation."""

import pytest
from hypothesis import HealthCheck, given, settings
from test_server_support import served, start_stack, tiny_engine

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode

# a short context keeps the generations schemathesis asks for short
stack, _settled = served(lambda: start_stack(tiny_engine(max_model_len=96)))


def operations(url):
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(op, mode, url):
    """Up to 20 generated requests for one operation; none may get a 5xx."""
    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=20, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def no_server_error(case):
        response = case.call(base_url=url, timeout=120)
        assert response.status_code < 500, (op.path, case.body, response.text)
        if response.status_code >= 400 and response.status_code != 405:
            assert_error_shape(op.path, response.json())

    no_server_error()


def assert_error_shape(path: str, body: dict) -> None:
    """Each API answers errors in its own clients' shape."""
    if path.startswith("/v1/messages"):  # Anthropic's
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    elif path.startswith("/api/"):  # Ollama's
        assert set(body) == {"error"} and isinstance(body["error"], str)
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(stack, mode):
    ops = operations(stack.url)
    assert {op.path for op in ops} >= {"/v1/chat/completions", "/v1/completions",
                                        "/v1/models", "/health", "/metrics"}
    if mode is GenerationMode.NEGATIVE:  # only bodies can be invalid (any path is a string)
        ops = [op for op in ops if op.body]
    for op in ops:
        fuzz(op, mode, stack.url)
