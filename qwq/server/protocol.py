"""Request bodies of the OpenAI API (plus vLLM's extra sampling fields), as pydantic models.

Every field is bounded: lengths of strings and lists, ranges of numbers, no NaN or infinity.
Types are JSON's, strictly, as the OpenAPI document states them: "5" is not a number nor 1 a
boolean (5.0 is an integer, as JSON Schema counts it). Unknown fields are ignored, as OpenAI
clients send fields this server does not use. What needs the model (vocabulary, context
length) is checked later, in sampling.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema

from qwq.sampling_params import MAX_LOGPROBS, MAX_N, MAX_STOP_LEN, MAX_STOP_STRINGS

MAX_TOKENS_BOUND = 1 << 20  # beyond any context; the real limit is the model's context
MAX_ITEMS = 4096  # messages, prompts, tools, content parts
MAX_NAME = 256
MAX_LOGIT_BIAS = 1024
MAX_PROMPT_IDS = 1 << 20
MAX_SEED = 1 << 62

Name = Annotated[str, StringConstraints(max_length=MAX_NAME)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_LEN)]
# a token id; the served OpenAPI document bounds it by the model's vocabulary (qwq.server.openapi)
TokenId = Annotated[int, Field(ge=0, lt=1 << 31, json_schema_extra={"x-token-id": True})]


def _float(lo: float, hi: float, gt: bool = False) -> Any:
    bounds = {"gt": lo} if gt else {"ge": lo}
    return Field(None, le=hi, allow_inf_nan=False, **bounds)


def _integral(value: Any) -> Any:
    """value with every float that holds an integer (5.0) as an int; strict validation would
    refuse it for an integer field, which JSON Schema says it is."""
    kind = type(value)
    if kind is float:
        return int(value) if value.is_integer() else value
    if kind is dict:
        return {k: _integral(v) for k, v in value.items()}
    if kind is list:
        if all(type(v) is int for v in value):  # token ids, the one big list: nothing to do
            return value
        return [_integral(v) for v in value]
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        return _integral(data) if isinstance(data, dict) else data


class SamplingFields(_Body):
    """Sampling fields shared by chat and completions (vLLM's names for the extras)."""

    model: Name | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND)
    temperature: float | None = _float(0.0, 100.0)
    top_p: float | None = _float(0.0, 1.0, gt=True)
    top_k: int | None = Field(None, ge=-1, le=MAX_TOKENS_BOUND)
    min_p: float | None = _float(0.0, 1.0)
    presence_penalty: float | None = _float(-2.0, 2.0)
    frequency_penalty: float | None = _float(-2.0, 2.0)
    repetition_penalty: float | None = _float(0.0, 100.0, gt=True)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None \
        = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_STRINGS)] | None = None
    logit_bias: Annotated[dict[Annotated[str, StringConstraints(max_length=16)],
                               Annotated[float, Field(allow_inf_nan=False)]],
                          Field(max_length=MAX_LOGIT_BIAS)] | None = None
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_BOUND)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    user: Name | None = None
    cache_salt: Name | None = None
    return_token_ids: bool = False  # vLLM's: prompt and output token ids in the response
    # reasoning controls (the same names as SamplingParams and the CLI flags)
    max_thinking_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND)
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    loop_control: Literal["off", "stop", "nudge", "penalize"] = "nudge"
    language: Annotated[str, StringConstraints(max_length=16)] | None = None
    guard: Name | None = None
    conclude: bool | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class StreamOptions(_Body):
    include_usage: bool = False


# -- chat ---------------------------------------------------------------------------------------
class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: Name
    arguments: str = ""


class ToolCall(_Body):
    id: Name | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


Content = str | Annotated[list[TextPart], Field(min_length=1, max_length=MAX_ITEMS)]


class ChatMessage(_Body):
    """One message. As in OpenAI's API, every role needs content except an assistant message
    that carries tool_calls (a model's turn that only called tools)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_ITEMS)] | None = None
    content: Content | None = Field(None, validate_default=True)
    name: Name | None = None
    tool_call_id: Name | None = None
    reasoning_content: str | None = None

    @field_validator("content")
    @classmethod
    def _content_by_role(cls, content: Content | None, info: ValidationInfo) -> Content | None:
        role = info.data.get("role")  # absent when the role itself was invalid
        if content is None and role is not None \
                and not (role == "assistant" and info.data.get("tool_calls")):
            raise ValueError("an assistant message needs content or tool_calls"
                             if role == "assistant" else f"a {role} message needs content")
        return content

    @classmethod
    def __get_pydantic_json_schema__(cls, core: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        """The same rule in the schema: content that is not null, or an assistant role with
        at least one tool call."""
        schema = handler(core)
        target = handler.resolve_ref_schema(schema)
        props = target["properties"]
        content = [s for s in props["content"]["anyOf"] if s.get("type") != "null"]
        calls = next(s for s in props["tool_calls"]["anyOf"] if s.get("type") == "array")
        target["anyOf"] = [
            {"required": ["content"], "properties": {"content": {"anyOf": content}}},
            {"required": ["role", "tool_calls"],
             "properties": {"role": {"const": "assistant"},
                            "tool_calls": {**calls, "minItems": 1}}}]
        return schema


FunctionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]


class FunctionFields(BaseModel):
    """A function tool's declaration, as chat's tools[].function and the Responses API's flat
    tools[] both write it; each API's model takes these fields beside its own body base."""

    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionDef(_Body, FunctionFields):
    """tools[].function."""


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class ToolChoiceFunction(_Body):
    name: Name


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: ToolChoiceFunction


class JsonSchemaFormat(_Body):
    name: Name = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_ITEMS)]
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: Annotated[list[Tool], Field(max_length=MAX_ITEMS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    # vLLM's template controls: extra template variables, and assistant prefill (the answer
    # continues the last assistant message)
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False


# -- completions --------------------------------------------------------------------------------
PromptIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_PROMPT_IDS)]
PromptText = Annotated[str, StringConstraints(min_length=1)]
Prompt = (PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=MAX_ITEMS)]
          | PromptIds | Annotated[list[PromptIds], Field(min_length=1, max_length=MAX_ITEMS)])


class CompletionRequest(SamplingFields):
    prompt: Prompt
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = Field(
        None, description="text after the insertion point: fill in the middle (FIM tokens)")
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS_BOUND)


SamplingFields.model_rebuild()
