"""``concepts`` section (stage concepts): a catalog file or an LLM, and the filters of its answers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.concepts.filters import DEFAULT_CONTEXT_TERMS
from pipeline.config import StrictConfig


class ConceptFilterConfig(StrictConfig):
    """``concepts.filters``: applied to every proposed list, each drop reported per class."""

    max_chars: int = Field(30, ge=3, description="drop concepts longer than this")
    max_concepts: int = Field(8, ge=1, description="keep at most this many per class (first proposed first)")
    drop_class_name: bool = Field(True, description="drop concepts that contain a word of the class's name")
    context_terms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CONTEXT_TERMS),
        description="a concept with one of these words is context, not a part",
    )


class LlmConfig(StrictConfig):
    """``concepts.llm``: any litellm model; keys come from the provider's usual environment variable."""

    model: str = Field(
        "openai/gpt-4o-mini",
        description="litellm model name, e.g. openai/gpt-4o-mini, anthropic/claude-3-5-haiku-latest, ollama_chat/llama3.1",
    )
    api_base: str | None = Field(
        None, description="OpenAI-compatible server URL (vLLM, Ollama, a proxy); null = the provider's"
    )
    api_key_env: str | None = Field(
        None, description="environment variable holding the key; null = litellm's default for the provider"
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    samples: int = Field(
        1, ge=1, le=20, description="answers per class, merged in order (samples > 1 needs temperature > 0)"
    )
    max_tokens: int = Field(400, ge=16)
    json_schema: bool = Field(
        True, description="ask for a JSON-schema answer (response_format); answers are validated either way"
    )
    few_shot: bool = Field(True, description="show two worked examples in the prompt")
    timeout_s: float = Field(60.0, gt=0.0)
    max_retries: int = Field(
        4, ge=0, description="retries of transient errors (timeout, rate limit, connection, 5xx) and invalid answers"
    )
    backoff_s: float = Field(1.0, ge=0.0, description="first retry delay; doubled after each retry")
    concurrency: int = Field(8, ge=1, description="classes asked at the same time")
    cache_dir: str | None = Field(
        ".cache/llm", description="litellm disk cache: reruns and colleagues reuse answers; null = off"
    )
    on_invalid: Literal["fail", "fallback"] = Field(
        "fail", description="a class with no valid answer: fail listing the classes, or use the fallback concept"
    )
    fallback_concept: str = Field("{class}", description="fallback: this concept ({class} = the class name)")


class ConceptsConfig(StrictConfig):
    """``concepts`` section: the visual parts that identify each class."""

    source: Literal["catalog", "llm"] = Field(
        "catalog", description="catalog: a YAML file or the dataset's own catalog; llm: ask a language model"
    )
    catalog: str | None = Field(None, description="YAML file class -> list of concepts; null = the dataset's catalog")
    llm: LlmConfig = Field(default_factory=LlmConfig)
    filters: ConceptFilterConfig = Field(default_factory=ConceptFilterConfig)
