"""Request bodies of the OpenAI-compatible API, and its error type.

Unknown OpenAI fields (``frequency_penalty``, ``user``, ...) are accepted and ignored, as OpenAI-compatible servers
usually do; the ones we cannot honour in a way a client would rely on (``n > 1``) are refused in words.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ROLES = ("system", "user", "assistant", "developer")


class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}`` with a status code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """What both completion endpoints take. Unset sampling fields mean the model's own defaults."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text; OpenAI's list form keeps its text parts only."""
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type", "text") == "text")
        return self.content or ""


class ChatRequest(Sampling):
    messages: list[ChatMessage]
    logprobs: bool | None = None  # the tokens' log-probabilities (api.logprobs)
    top_logprobs: int | None = None  # 0..20 alternatives per token; needs logprobs
    collection: str | None = None  # extension: answer from this document collection, as the Documents tab does


class CompletionRequest(Sampling):
    prompt: str | list[str]
    logprobs: int | None = None  # legacy: log-probabilities of the tokens and of N alternatives each


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32 bytes
