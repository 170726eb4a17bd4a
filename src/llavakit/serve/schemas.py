"""Request and response shapes of the OpenAI chat API (the subset a vision chat model serves).

Requests are validated here (types, ranges, lengths) so that the handlers only see well-formed values. Unknown
top-level fields are ignored as OpenAI-compatible servers do; the OpenAI fields this server cannot honour (tool and
function calls, structured output, penalties, logit bias) are declared so that a value other than their default
is refused (400) instead of silently changing the answer's meaning. Responses are built as plain dicts in ``app.py``;
the models below document them in /openapi.json.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

MAX_STOP = 4  # OpenAI's limit on stop strings


def _non_empty_stop(s: str) -> str:
    if not s:  # it would match at once (vLLM refuses it too)
        raise ValueError("an empty stop string would end every answer before its first token; leave it out")
    return s


StopString = Annotated[str, Field(max_length=256), AfterValidator(_non_empty_stop)]  # matched after every token
MAX_MESSAGES = 256


class ImageURL(BaseModel):
    url: str = Field(min_length=1, description="data:image/png;base64,... (or http(s):// with --allow-remote-images)")
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(BaseModel):
    url: str = Field(
        min_length=1, description="data:video/mp4;base64,... (or http(s):// with --allow-remote-images); OneVision only"
    )


class VideoPart(BaseModel):
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


def not_supported(subject: str, instead: str) -> ValueError:
    """The refusal of a value the server cannot honour: ``subject`` with its verb ("tools is"), what to send instead."""
    return ValueError(f"{subject} not supported by this server; {instead}")


NO_CALLS = "it makes no tool or function calls"


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = Field(
        default=None, description="a string or a list of at least one part; null, missing or [] is a 400"
    )
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(default=None, description="not supported: null or []")
    function_call: dict[str, Any] | None = Field(default=None, description="not supported: null")

    @field_validator("role", mode="before")
    @classmethod
    def _no_tool_results(cls, v: Any) -> Any:  # noqa: ANN401 - any JSON value, checked against the Literal next
        if v in ("tool", "function"):
            raise not_supported(f"role {v!r}: messages with tool or function results are", NO_CALLS)
        return v

    @field_validator("tool_calls", "function_call")
    @classmethod
    def _no_calls(cls, v: list | dict | None, info: ValidationInfo) -> list | dict | None:
        if v:
            raise not_supported(f"{info.field_name} in a message is", NO_CALLS)
        return v


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)  # as OpenAI: "true" or 1 is not a boolean
    include_usage: bool | None = False


class ChatCompletionRequest(BaseModel):
    # strict, as OpenAI's API: "5" or 5.0 is not an integer and "yes" or 1 not a boolean (400, not a guess);
    # an integer is still a number (temperature 1)
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # null is accepted wherever OpenAI's schema accepts it, and means the default
    temperature: float | None = Field(default=1.0, ge=0.0, le=2.0, description="below 1e-5: greedy, as 0")
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # int64, as vLLM; the CLI takes these too
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=1, ge=1, le=1, description="only 1 is supported")
    logprobs: bool | None = Field(default=None, description="not supported: false or null")
    top_logprobs: int | None = Field(default=None, description="not supported: 0 or null")
    # OpenAI fields this server cannot honour: only their defaults are accepted (the validators below refuse the rest)
    tool_choice: str | dict[str, Any] | None = Field(default=None, description='not supported: "none" or null')
    tools: list[dict[str, Any]] | None = Field(default=None, description='not supported (but with tool_choice "none")')
    function_call: str | dict[str, Any] | None = Field(default=None, description='not supported: "none" or null')
    functions: list[dict[str, Any]] | None = Field(
        default=None, description='not supported (but with function_call "none")'
    )
    response_format: dict[str, Any] | None = Field(default=None, description='only {"type": "text"} or null')
    presence_penalty: float | None = Field(default=None, description="not supported: 0 or null")
    frequency_penalty: float | None = Field(default=None, description="not supported: 0 or null")
    logit_bias: dict[str, float] | None = Field(default=None, description="not supported: {} or null")
    # extensions, as vLLM names them
    top_k: int | None = Field(default=0, ge=-1, le=1_000_000, description="0 or -1: no top-k filtering")
    repetition_penalty: float | None = Field(default=1.0, gt=0.0, le=10.0)
    ignore_eos: bool | None = Field(default=False, description="keep generating past EOS (to max_tokens or a stop)")

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | int | None) -> bool | int | None:
        if v:
            raise ValueError("log probabilities are not supported by this server; leave logprobs / top_logprobs unset")
        return v

    # tool_choice / function_call are declared before tools / functions: the validators of these see the choice
    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_call_choice(cls, v: str | dict | None, info: ValidationInfo) -> str | dict | None:
        if v not in (None, "none"):
            what = f"{info.field_name} {v!r}" if isinstance(v, str) else info.field_name
            raise not_supported(f"{what} is", f'{NO_CALLS}: leave it out or send "none"')
        return v

    @field_validator("tools", "functions")
    @classmethod
    def _no_callables(cls, v: list | None, info: ValidationInfo) -> list | None:
        choice = "tool_choice" if info.field_name == "tools" else "function_call"
        if v and info.data.get(choice) != "none":
            raise not_supported(f"{info.field_name} is", f'{NO_CALLS}: leave it out (or send {choice} "none")')
        return v

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v: dict | None) -> dict | None:
        if v is not None and v.get("type") != "text":
            raise not_supported(f"response_format {v.get('type')!r} is", 'leave it out or send {"type": "text"}')
        return v

    @field_validator("presence_penalty", "frequency_penalty", "logit_bias")
    @classmethod
    def _no_penalties(cls, v: float | dict | None, info: ValidationInfo) -> float | dict | None:
        if v:  # 0, {} and null change nothing (NaN is truthy: refused too)
            raise not_supported(f"{info.field_name} is", f"leave it out or send {'{}' if isinstance(v, dict) else 0}")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> ChatCompletionRequest:
        """Nulls become the defaults (``top_k`` -1 too); ``stream_options`` only with ``stream: true`` (as OpenAI)."""
        defaults = {"temperature": 1.0, "top_p": 1.0, "stream": False, "n": 1, "top_k": 0, "repetition_penalty": 1.0}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.top_k == -1:  # vLLM's "disabled"
            self.top_k = 0
        if self.ignore_eos is None:
            self.ignore_eos = False
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        both = (self.max_tokens, self.max_completion_tokens)
        if None not in both and both[0] != both[1]:  # which one the caller meant is not ours to guess
            raise ValueError(
                f"max_tokens ({both[0]}) and max_completion_tokens ({both[1]}) differ; send one of them "
                "(max_completion_tokens is OpenAI's current name)"
            )
        return self

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llavakit"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    # with status 503: "error" the model worker has stopped, "shutting_down" the server is stopping
    status: Literal["ok", "error", "shutting_down"] = "ok"
    model: str
    queue_depth: int
    running: int
