"""Request and response shapes of the OpenAI chat API (the subset a vision chat model serves).

Requests are validated here (types, ranges, lengths) so that the handlers only see well-formed values; unknown
top-level fields are ignored as OpenAI-compatible servers do. Responses are built as plain dicts in ``app.py``;
the models below document them in /openapi.json.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP = 4  # OpenAI's limit on stop strings
StopString = Annotated[str, Field(max_length=256)]  # matched against the text after every token: kept short
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


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # null is accepted wherever OpenAI's schema accepts it, and means the default
    temperature: float | None = Field(default=1.0, ge=0.0, le=2.0, description="below 1e-5: greedy, as 0")
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=1, ge=1, le=1, description="only 1 is supported")
    logprobs: bool | None = Field(default=None, description="not supported: false or null")
    top_logprobs: int | None = Field(default=None, description="not supported: 0 or null")
    # extensions, as vLLM names them
    top_k: int | None = Field(default=0, ge=0, le=1_000_000)
    repetition_penalty: float | None = Field(default=1.0, gt=0.0, le=10.0)
    ignore_eos: bool | None = Field(default=False, description="keep generating past EOS (to max_tokens or a stop)")

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | int | None) -> bool | int | None:
        if v:
            raise ValueError("log probabilities are not supported by this server; leave logprobs / top_logprobs unset")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> ChatCompletionRequest:
        """Nulls become the defaults; ``stream_options`` only with ``stream: true`` (as OpenAI answers)."""
        defaults = {"temperature": 1.0, "top_p": 1.0, "stream": False, "n": 1, "top_k": 0, "repetition_penalty": 1.0}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.ignore_eos is None:
            self.ignore_eos = False
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

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
    status: Literal["ok", "error"] = "ok"  # "error" (with status 503): the model worker has stopped
    model: str
    queue_depth: int
    running: int
