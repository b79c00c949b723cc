"""OpenAI's embeddings API (`POST /v1/embeddings`): its request as the gateway reads it. Not scored (there is
nothing to route by difficulty): it goes to a worker with role `embeddings`. Limits count its input tokens; the
answer's usage has `prompt_tokens` only."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from router.core.limits import text_tokens
from router.protocol import GenerationRequest

__all__ = ["EmbeddingsRequest"]

TokenId = Annotated[int, Field(ge=0, lt=1 << 31)]
# Every form is non-empty, said in the types so that the OpenAPI document says it too.
Text = Annotated[str, Field(min_length=1)]
Tokens = Annotated[list[TokenId], Field(min_length=1)]


class EmbeddingsRequest(GenerationRequest):
    BOUNDS = ()  # nothing is generated: a tier's max_tokens does not apply, nothing is reserved past the input
    PROMPT = "input"
    CASCADES = False
    SCORED = False

    input: Text | Annotated[list[Text], Field(min_length=1)] | Tokens | Annotated[list[Tokens], Field(min_length=1)]

    stream: Literal[False] | None = False  # embeddings are not streamed

    def estimated_prompt_tokens(self) -> int:
        value = self.input
        if isinstance(value, str):
            return text_tokens(value)
        return sum(text_tokens(v) if isinstance(v, str) else len(v) if isinstance(v, list) else 1 for v in value)
