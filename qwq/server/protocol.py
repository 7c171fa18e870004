"""Request bodies of the OpenAI API (plus vLLM's extra sampling fields), as pydantic models.

Every field is bounded: lengths of strings and lists, ranges of numbers, no NaN or infinity.
Unknown fields are ignored, as OpenAI clients send fields this server does not use.
What needs the model (vocabulary, context length) is checked later, in sampling.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from qwq.sampling_params import MAX_LOGPROBS, MAX_N, MAX_STOP_LEN, MAX_STOP_STRINGS

MAX_TOKENS_BOUND = 1 << 20  # beyond any context; the real limit is the model's context
MAX_ITEMS = 4096  # messages, prompts, tools, content parts
MAX_NAME = 256
MAX_LOGIT_BIAS = 1024
MAX_PROMPT_IDS = 1 << 20
MAX_SEED = 1 << 62

Name = Annotated[str, StringConstraints(max_length=MAX_NAME)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_LEN)]
TokenId = Annotated[int, Field(ge=0, lt=1 << 31)]


def _float(lo: float, hi: float, gt: bool = False) -> Any:
    bounds = {"gt": lo} if gt else {"ge": lo}
    return Field(None, le=hi, allow_inf_nan=False, **bounds)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


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


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextPart], Field(max_length=MAX_ITEMS)] | None = None
    name: Name | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_ITEMS)] | None = None
    tool_call_id: Name | None = None
    reasoning_content: str | None = None


class FunctionDef(_Body):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


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
Prompt = (str | Annotated[list[str], Field(min_length=1, max_length=MAX_ITEMS)] | PromptIds
          | Annotated[list[PromptIds], Field(min_length=1, max_length=MAX_ITEMS)])


class CompletionRequest(SamplingFields):
    prompt: Prompt
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS_BOUND)


SamplingFields.model_rebuild()
