"""Label-free concept proposal through any LLM (litellm), cached, retried and validated.

For each class the model is asked (Label-free CBM style, aimed at visible object parts) for the
visual features that identify it, as JSON. Answers are parsed (strict JSON, JSON in a markdown
fence or in prose, or a bare list), filtered (``pipeline.concepts.filters``) and merged over
``samples`` answers. Transient errors (timeout, rate limit, connection, 5xx answered by a
server) are retried with exponential backoff, as are answers that cannot be parsed; other errors
(a missing or rejected key, a bad request, an unknown model) stop at once with the provider's
whole message, and key errors name the environment variable to set. A class without a valid
answer after the retries is never given an empty list: the stage fails naming the classes, or
(``on_invalid: fallback``) uses the fallback concept and reports it.

Keys come from the environment only (``api_key_env``, else the provider's usual variable) and are
never part of a request's cache key, an artifact or a message. A local OpenAI-compatible server
(``api_base`` with an ``openai/`` model: vLLM, llama.cpp, a proxy) needs no key: without one, the
placeholder :data:`PLACEHOLDER_KEY` is sent, because the OpenAI client refuses to run keyless.

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
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from pipeline.concepts.filters import FilterReport, filter_concepts
from pipeline.utils.atomic import write_json
from pipeline.utils.errors import CftError

if TYPE_CHECKING:
    from pipeline.config.concepts import ConceptFilterConfig, LlmConfig

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

# Sent to an ``api_base`` server when no key is set (vLLM's documented convention); not a secret.
PLACEHOLDER_KEY = "EMPTY"
# litellm routes built on the OpenAI client, which raises "Missing credentials" before any request
# without a key (litellm's hosted_vllm, lm_studio and llamafile routes send a placeholder themselves).
_OPENAI_CLIENT_PROVIDERS = frozenset({"openai", "custom_openai", "text-completion-openai"})
_OPENAI_KEY_VARIABLE = "OPENAI_API_KEY"
# A transient error's text kept per retry (concepts.json, the final message); an HTML error page
# can be long. Errors that stop the stage are reported whole.
_TRANSIENT_TEXT_LIMIT = 2000
_NOT_RETRIED_5XX = frozenset({501, 505})  # not implemented / HTTP version: asking again cannot help


class InvalidAnswer(CftError):
    """An answer that holds no list of concepts; the message says what was wrong."""


class LlmError(CftError):
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


def _one_line(text: str, limit: int | None = None) -> str:
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        return f"{text[:limit]}… ({len(text) - limit} more characters)"
    return text


def _provider(model: str) -> str | None:
    import litellm

    try:
        return litellm.get_llm_provider(model=model)[1]
    except litellm.BadRequestError:  # an unknown provider: litellm's own call reports it
        return None


def key_variables(config: LlmConfig) -> list[str]:
    """The environment variable(s) that hold the key: ``api_key_env``, else the provider's usual ones.

    litellm's :func:`litellm.validate_environment` names a provider's variables only while they are
    missing; once a key is set (and rejected), ``<PROVIDER>_API_KEY`` is named if that is set.
    Empty when unknown.
    """
    import litellm

    if config.api_key_env:
        return [config.api_key_env]
    provider = _provider(config.model)
    if provider in _OPENAI_CLIENT_PROVIDERS:
        return [_OPENAI_KEY_VARIABLE]
    missing = litellm.validate_environment(config.model)["missing_keys"]  # an unknown provider: none
    names = [name for name in missing if "KEY" in name or "TOKEN" in name]  # not OLLAMA_API_BASE, VERTEXAI_PROJECT
    if names:
        return names
    guess = f"{provider.upper()}_API_KEY" if provider else None
    return [guess] if guess and os.environ.get(guess) else []


def _raised_before_request(exc: BaseException) -> bool:
    """Whether the OpenAI client itself refused to send (e.g. "Missing credentials").

    litellm wraps such an ``openai.OpenAIError`` (neither an HTTP status, a connection error nor a
    timeout) as an InternalServerError with a made-up status 500; it is a configuration error, and
    asking again cannot help.
    """
    import openai

    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, openai.OpenAIError) and not isinstance(cause, openai.APIError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def classify_error(exc: BaseException) -> str | None:
    """``"key"`` (missing or rejected key), ``"transient"`` (retry), ``"fatal"`` (stop), or None (not litellm's)."""
    import litellm
    import openai

    if _raised_before_request(exc):
        return "key" if re.search(r"credential|api[_ -]?key", str(exc), re.IGNORECASE) else "fatal"
    if isinstance(exc, litellm.AuthenticationError):
        return "key"
    transient = (
        litellm.Timeout,  # also 408 and 504
        litellm.RateLimitError,
        litellm.APIConnectionError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
    )
    if isinstance(exc, transient):
        return "transient"
    if isinstance(exc, openai.OpenAIError):
        # litellm maps statuses without a class of their own (403, 409, 413, 520, 529, ...) to APIError
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and status >= 500 and status not in _NOT_RETRIED_5XX:
            return "transient"
        return "fatal"
    return None


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

    def __init__(
        self,
        config: LlmConfig,
        filters: ConceptFilterConfig,
        completion: Completion | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.filters = filters
        self.cache = AnswerCache(config.cache_dir)
        self._completion = completion
        self._sleep = sleep
        self._api_key = self._resolve_key()

    def _resolve_key(self) -> str | None:
        """The key passed to litellm, or None to let litellm read the provider's usual variable."""
        config = self.config
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise LlmError(
                    f"concepts.llm.api_key_env: environment variable {config.api_key_env} is not set (it should hold the key for {config.model})"
                )
            return key
        if (
            config.api_base
            and _provider(config.model) in _OPENAI_CLIENT_PROVIDERS
            and not os.environ.get(_OPENAI_KEY_VARIABLE)
        ):
            return PLACEHOLDER_KEY  # a local server that checks no key; one that does answers 401
        return None

    def _key_advice(self) -> str:
        """What to do about a missing or rejected key, naming the variable."""
        config = self.config
        names = key_variables(config)
        other = "" if config.api_key_env else " (or name another variable in concepts.llm.api_key_env)"
        if not names:
            return (
                "missing or rejected API key: set the provider's key variable, or name it in concepts.llm.api_key_env"
            )
        shown = " and ".join(names)
        if all(os.environ.get(name) for name in names):
            return f"the API key in {shown} was rejected: check it{other}"
        asked = f" (the server at {config.api_base} asks for one)" if config.api_base else ""
        return f"no API key{asked}: set the environment variable {shown}{other}"

    def _request(self, messages: list[dict[str, str]], sample: int) -> dict[str, Any]:
        """What identifies an answer (the cache key): no key, no timeout, nothing secret."""
        config = self.config
        request: dict[str, Any] = {
            "model": config.model,
            "messages": messages,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
        }
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
        if self._api_key is not None:
            kwargs["api_key"] = self._api_key
        completion = self._completion or litellm.completion
        response = completion(**kwargs)
        return response.choices[0].message.content

    def _ask(self, name: str, sample: int, result: ClassResult) -> list[str] | None:
        request = self._request(build_messages(name, self.filters.max_concepts, self.config.few_shot), sample)
        cached = self.cache.get(request)
        if cached is not None:
            return parse_concepts(cached)
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
            except Exception as exc:
                kind = classify_error(exc)
                if kind is None:
                    raise
                if kind == "transient":
                    result.errors.append(f"{type(exc).__name__}: {_one_line(str(exc), _TRANSIENT_TEXT_LIMIT)}")
                    continue
                advice = f"{self._key_advice()}. " if kind == "key" else ""
                what = (
                    f"the request about '{name}' was not sent"
                    if _raised_before_request(exc)
                    else f"{type(exc).__name__} while asking about '{name}'"
                )
                raise LlmError(f"{self.config.model}: {advice}{what}: {_one_line(str(exc))}") from exc
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
            for future in tqdm(
                as_completed(futures), total=len(futures), desc="concepts", unit="class", disable=not progress
            ):
                results[futures[future]] = future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # a fatal error (e.g. a bad key): ask no further classes
            raise
    failed = [name for name in classes if not results[name].concepts]
    if failed:
        details = "; ".join(
            f"{name}: {results[name].errors[-1] if results[name].errors else 'every concept was filtered out'}"
            for name in failed[:10]
        )
        raise LlmError(
            f"{len(failed)} class(es) without valid concepts after {config.max_retries} retries: {failed}. Last errors: {details}"
        )
    return {name: results[name] for name in classes}, proposer.cache.hits
