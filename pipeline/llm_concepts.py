"""Label-free concept proposal through any LLM (litellm), cached, retried and validated.

For each class the model is asked (Label-free CBM style, aimed at visible object parts) for the
visual features that identify it, as JSON. Answers are parsed (strict JSON, JSON in a markdown
fence or in prose, or a bare list), filtered (``pipeline.concept_filters``) and merged over
``samples`` answers. Transient errors (timeout, rate limit, connection, 5xx) are retried with
exponential backoff, as are answers that cannot be parsed; other errors (authentication, a bad
request, an unknown model) stop at once with the provider's message. A class without a valid
answer after the retries is never given an empty list: the stage fails naming the classes, or
(``on_invalid: fallback``) uses the fallback concept and reports it.

Valid answers are cached on disk, keyed by model, messages and parameters, so a rerun, or a
colleague with the same cache directory, sends no request.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.concept_filters import FilterReport, filter_concepts
from pipeline.atomic import write_json
from pipeline.config import ConceptFilterConfig, LlmConfig

PROMPT_TEMPLATE = (
    'List the most important visual features for recognising a "{name}" in a photo. '
    "Name only parts or attributes of the {name} itself that are visible in the image (its parts, "
    "shapes, colours, textures), not its surroundings, background, habitat or things often seen "
    'with it, and do not use the word "{name}". Answer with JSON only: '
    '{{"concepts": ["...", "..."]}}, at most {count} short phrases of one to three words.'
)
SYSTEM_PROMPT = "You are an expert in visual recognition. You answer with JSON only."
FEW_SHOT = (
    ("duck", ["webbed feet", "flat bill", "wings", "short neck", "feathers"]),
    ("school bus", ["yellow paint", "rows of windows", "stop sign arm", "black bumpers", "wheels"]),
)
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "concepts",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"concepts": {"type": "array", "items": {"type": "string"}}},
            "required": ["concepts"],
            "additionalProperties": False,
        },
    },
}
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


class InvalidAnswer(ValueError):
    """An answer that holds no list of concepts; the message says what was wrong."""


class LlmError(ValueError):
    """The LLM could not be used (authentication, unknown model, classes without valid answers)."""


def prompt_hash() -> str:
    text = json.dumps([SYSTEM_PROMPT, PROMPT_TEMPLATE, FEW_SHOT])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_messages(name: str, count: int, few_shot: bool) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    if few_shot:
        for example, concepts in FEW_SHOT:
            messages.append({"role": "user", "content": PROMPT_TEMPLATE.format(name=example, count=count)})
            messages.append({"role": "assistant", "content": json.dumps({"concepts": concepts})})
    messages.append({"role": "user", "content": PROMPT_TEMPLATE.format(name=name, count=count)})
    return messages


def _candidates(text: str) -> Iterator[str]:
    yield text
    yield from (match.strip() for match in _FENCE.findall(text))
    for opening, closing in (("{", "}"), ("[", "]")):
        start, end = text.find(opening), text.rfind(closing)
        if 0 <= start < end:
            yield text[start : end + 1]


def parse_concepts(text: str | None) -> list[str]:
    """The concept strings in an answer: ``{"concepts": [...]}`` or a bare list, possibly fenced or in prose."""
    if text is None or not text.strip():
        raise InvalidAnswer("empty answer")
    for candidate in _candidates(text.strip()):
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            value = value.get("concepts")
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            return value
        raise InvalidAnswer(f"JSON without a non-empty list of strings under 'concepts': {candidate[:80]!r}")
    raise InvalidAnswer(f"not valid JSON: {text.strip()[:80]!r}")


def _transient_errors() -> tuple[type[BaseException], ...]:
    import litellm

    return (
        litellm.Timeout,
        litellm.RateLimitError,
        litellm.APIConnectionError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
    )


class AnswerCache:
    """Valid answers on disk, one JSON file per request, keyed by sha256 of (model, messages, params).

    Plain files rather than litellm's own cache: they can be inspected, shared (e.g. tracked by
    DVC or copied to a colleague), and only valid answers are stored, so a bad answer is asked
    again. (litellm 1.106's cache-hit path also imports its proxy extra, fastapi.)
    """

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self.hits = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()

    def get(self, request: dict[str, Any]) -> str | None:
        if self.directory is None:
            return None
        path = self.directory / f"{self.key(request)}.json"
        try:
            answer = json.loads(path.read_text())["answer"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        with self._lock:
            self.hits += 1
        return answer

    def put(self, request: dict[str, Any], answer: str) -> None:
        if self.directory is not None:
            write_json(self.directory / f"{self.key(request)}.json", {"request": request, "answer": answer})


@dataclass
class ClassResult:
    class_name: str
    concepts: list[str]
    report: FilterReport
    requests: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    fallback: bool = False


Completion = Callable[..., Any]


class ConceptProposer:
    """Asks the LLM about each class; thread-safe, one instance per stage run."""

    def __init__(self, config: LlmConfig, filters: ConceptFilterConfig, completion: Completion | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.filters = filters
        self.cache = AnswerCache(config.cache_dir)
        self._completion = completion
        self._sleep = sleep

    def _request(self, messages: list[dict[str, str]], sample: int) -> dict[str, Any]:
        """What identifies an answer (the cache key): no key, no timeout, nothing secret."""
        config = self.config
        request: dict[str, Any] = {"model": config.model, "messages": messages, "temperature": config.temperature, "max_tokens": config.max_tokens}
        if config.api_base:
            request["api_base"] = config.api_base
        if config.json_schema:
            request["response_format"] = RESPONSE_FORMAT
        if config.samples > 1:
            request["seed"] = sample  # a distinct answer per sample where the provider supports seeds
        return request

    def _call(self, request: dict[str, Any]) -> str | None:
        import litellm

        kwargs = {**request, "timeout": self.config.timeout_s, "num_retries": 0, "drop_params": True}
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env)
            if not key:
                raise LlmError(f"concepts.llm.api_key_env: environment variable {self.config.api_key_env} is not set")
            kwargs["api_key"] = key
        completion = self._completion or litellm.completion
        response = completion(**kwargs)
        return response.choices[0].message.content

    def _ask(self, name: str, sample: int, result: ClassResult) -> list[str] | None:
        import litellm

        request = self._request(build_messages(name, self.filters.max_concepts, self.config.few_shot), sample)
        cached = self.cache.get(request)
        if cached is not None:
            return parse_concepts(cached)
        transient = _transient_errors()
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                result.retries += 1
                self._sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                result.requests += 1
                answer = self._call(request)
                concepts = parse_concepts(answer)
            except InvalidAnswer as exc:
                result.errors.append(f"invalid answer: {exc}")
                continue
            except transient as exc:
                result.errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")
                continue
            except (litellm.AuthenticationError, litellm.NotFoundError, litellm.BadRequestError, litellm.PermissionDeniedError, litellm.APIError) as exc:
                # litellm maps some statuses (e.g. 403 from OpenAI-compatible servers) to a plain APIError
                raise LlmError(f"{self.config.model}: {type(exc).__name__} while asking about '{name}': {str(exc)[:300]}") from exc
            self.cache.put(request, answer or "")
            return concepts
        return None

    def propose(self, class_name: str, readable_name: str) -> ClassResult:
        result = ClassResult(class_name, [], FilterReport())
        proposed: list[str] = []
        for sample in range(self.config.samples):
            answer = self._ask(readable_name, sample, result)
            if answer is not None:
                proposed += answer
        result.concepts, result.report = filter_concepts(readable_name, proposed, self.filters)
        if not result.concepts and self.config.on_invalid == "fallback":
            result.concepts = [self.config.fallback_concept.format(**{"class": readable_name})]
            result.fallback = True
        return result


def propose_concepts(
    classes: dict[str, str],
    config: LlmConfig,
    filters: ConceptFilterConfig,
    completion: Completion | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = True,
) -> tuple[dict[str, ClassResult], int]:
    """``classes``: dataset class name -> readable name used in the prompt.

    Returns the results in class order and the number of answers taken from the cache. Raises
    :class:`LlmError` listing every class left without concepts (``on_invalid: fail``).
    """
    import litellm

    litellm.suppress_debug_info = True
    proposer = ConceptProposer(config, filters, completion, sleep)
    results: dict[str, ClassResult] = {}
    with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
        futures = {pool.submit(proposer.propose, name, readable): name for name, readable in classes.items()}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc="concepts", unit="class", disable=not progress):
                results[futures[future]] = future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # a fatal error (e.g. a bad key): ask no further classes
            raise
    failed = [name for name in classes if not results[name].concepts]
    if failed:
        details = "; ".join(f"{name}: {results[name].errors[-1] if results[name].errors else 'every concept was filtered out'}" for name in failed[:10])
        raise LlmError(f"{len(failed)} class(es) without valid concepts after {config.max_retries} retries: {failed}. Last errors: {details}")
    return {name: results[name] for name in classes}, proposer.cache.hits
