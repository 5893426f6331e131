"""LLM concept proposal end to end through litellm and a scripted OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.concepts.llm import (
    FEW_SHOT,
    PLACEHOLDER_KEY,
    PROMPT_TEMPLATE,
    SYSTEM_PROMPT,
    ClassResult,
    InvalidAnswer,
    LlmError,
    parse_concepts,
    propose_concepts,
)
from pipeline.config.concepts import ConceptFilterConfig, LlmConfig
from tests.helpers.llm_server import Reply, ScriptedLLM, concepts_json

CLASSES = {"c0_heron": "heron", "c1_robin": "robin", "c2_duck": "duck"}
TOO_LONG = "a very very long concept phrase that exceeds the limit"


class Server(ScriptedLLM):
    """The scripted server polling for shutdown every 20 ms rather than 0.5 s, to keep the file fast."""

    def __enter__(self) -> Server:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self


@pytest.fixture(autouse=True)
def _openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def make_config(server: Server, **overrides: Any) -> LlmConfig:
    values: dict[str, Any] = {
        "model": "openai/test-model",
        "api_base": server.url,
        "cache_dir": None,
        "backoff_s": 0.0,
        "max_retries": 2,
        "concurrency": 4,
    }
    values.update(overrides)
    return LlmConfig(**values)


def propose(
    classes: dict[str, str],
    config: LlmConfig,
    filters: ConceptFilterConfig | None = None,
    sleeps: list[float] | None = None,
) -> tuple[dict[str, ClassResult], int]:
    sleep: Callable[[float], None] = (lambda s: None) if sleeps is None else sleeps.append
    return propose_concepts(classes, config, filters or ConceptFilterConfig(), sleep=sleep, progress=False)


def always(content: str | None) -> Callable[[str, int], Reply]:
    return lambda name, earlier: Reply(200, content)


def first_then_valid(
    first: Reply, times: int = 1, valid: tuple[str, ...] = ("long beak", "wings")
) -> Callable[[str, int], Reply]:
    return lambda name, earlier: first if earlier < times else Reply(200, concepts_json(*valid))


def bodies_for(server: Server, name: str) -> list[dict[str, Any]]:
    return [body for body in server.requests if f'recognising a "{name}"' in body["messages"][-1]["content"]]


def mixed_answer(name: str, earlier: int) -> Reply:
    return Reply(200, concepts_json("long beak", "Wings", "wings", "blue sky", f"{name} head", TOO_LONG))


@pytest.mark.parametrize(("json_schema", "few_shot"), [(True, True), (False, False)])
def test_valid_answers_are_filtered_and_requests_are_well_formed(json_schema: bool, few_shot: bool) -> None:
    with Server(mixed_answer) as server:
        results, hits = propose(CLASSES, make_config(server, json_schema=json_schema, few_shot=few_shot))

        assert hits == 0
        assert list(results) == list(CLASSES)
        for key, name in CLASSES.items():
            result = results[key]
            assert result.class_name == key
            assert result.concepts == ["long beak", "wings"]
            assert result.report.as_dict() == {
                "proposed": 6,
                "kept": 2,
                "dropped": {
                    "too_long": ["very very long concept phrase that exceeds the limit"],
                    "duplicate": ["wings"],
                    "names_class": [f"{name} head"],
                    "context": ["blue sky"],
                    "over_cap": [],
                },
            }
            assert (result.requests, result.retries, result.errors, result.fallback) == (1, 0, [], False)
            assert server.count(name) == 1
        assert server.count() == 3

        for name in CLASSES.values():
            (body,) = bodies_for(server, name)
            assert body["model"] == "test-model"
            assert body["temperature"] == 0.0
            assert body["max_tokens"] == 400
            assert "seed" not in body
            messages = body["messages"]
            assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
            assert messages[-1] == {"role": "user", "content": PROMPT_TEMPLATE.format(name=name, count=8)}
            if json_schema:
                assert body["response_format"]["type"] == "json_schema"
                assert body["response_format"]["json_schema"]["name"] == "concepts"
                assert body["response_format"]["json_schema"]["schema"]["required"] == ["concepts"]
            else:
                assert "response_format" not in body
            if few_shot:
                assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
                assert [json.loads(m["content"])["concepts"] for m in messages if m["role"] == "assistant"] == [
                    c for _, c in FEW_SHOT
                ]
                assert 'recognising a "duck"' in messages[1]["content"]
                assert 'recognising a "school bus"' in messages[3]["content"]
            else:
                assert [m["role"] for m in messages] == ["system", "user"]


def test_prompt_count_follows_max_concepts() -> None:
    with Server(always(concepts_json("a", "b", "c", "d", "e"))) as server:
        results, _ = propose({"duck": "duck"}, make_config(server, few_shot=False), ConceptFilterConfig(max_concepts=3))
        assert results["duck"].concepts == ["a", "b", "c"]
        assert results["duck"].report.over_cap == ["d", "e"]
        assert "at most 3 short phrases" in server.requests[0]["messages"][-1]["content"]


def test_rerun_with_cache_sends_nothing_and_parameter_changes_miss(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with Server(mixed_answer) as server:
        first, hits = propose(CLASSES, make_config(server, cache_dir=str(cache)))
        assert (hits, server.count()) == (0, 3)
        files = sorted(cache.glob("*.json"))
        assert len(files) == 3
        assert {json.loads(f.read_text())["request"]["model"] for f in files} == {"openai/test-model"}

        again, hits = propose(CLASSES, make_config(server, cache_dir=str(cache)))
        assert (hits, server.count()) == (3, 3)
        assert list(again) == list(CLASSES)
        assert {k: r.concepts for k, r in again.items()} == {k: r.concepts for k, r in first.items()}
        assert {k: r.requests for k, r in again.items()} == {k: 0 for k in CLASSES}

        _, hits = propose(
            CLASSES, make_config(server, cache_dir=str(cache), timeout_s=5.0, max_retries=0, concurrency=1)
        )
        assert (hits, server.count()) == (3, 3)

        _, hits = propose(CLASSES, make_config(server, cache_dir=str(cache), temperature=0.5))
        assert (hits, server.count()) == (0, 6)

        _, hits = propose(CLASSES, make_config(server, cache_dir=str(cache), model="openai/other-model"))
        assert (hits, server.count()) == (0, 9)
        assert server.requests[-1]["model"] == "other-model"
        assert len(list(cache.glob("*.json"))) == 9


@pytest.mark.parametrize(
    "content",
    [
        'Here you go:\n```json\n{"concepts": ["long beak", "Wings"]}\n```\nAnything else?',
        '```\n["long beak", "wings"]\n```',
        'Sure! The features are {"concepts": ["long beak", "wings"]} as requested.',
        'Features of a heron: ["long beak", "wings"]. Hope this helps.',
        '["long beak", "wings"]',
        '  {"concepts": ["long beak", "wings"]}\n',
    ],
    ids=["fence-json", "fence-bare", "prose-object", "prose-list", "bare-list", "whitespace"],
)
def test_answer_formats_parse(content: str) -> None:
    with Server(always(content)) as server:
        results, _ = propose({"heron": "heron"}, make_config(server))
        assert results["heron"].concepts == ["long beak", "wings"]
        assert (results["heron"].requests, results["heron"].retries) == (1, 0)
        assert server.count("heron") == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "empty answer"),
        ("   \n", "empty answer"),
        ("no json here", "not valid JSON"),
        ('{"concepts": []}', "non-empty list"),
        ('{"concepts": ["wings", 3]}', "non-empty list"),
        ('{"features": ["wings"]}', "non-empty list"),
        ('{"concepts": "wings"}', "non-empty list"),
    ],
)
def test_parse_concepts_rejects(text: str | None, message: str) -> None:
    with pytest.raises(InvalidAnswer, match=message):
        parse_concepts(text)


def invalid_for(bad: dict[str, str]) -> Callable[[str, int], Reply]:
    def script(name: str, earlier: int) -> Reply:
        return Reply(200, bad[name]) if name in bad else Reply(200, concepts_json("long beak", "wings"))

    return script


BAD = {"heron": "I cannot answer that", "robin": '{"concepts": []}'}


def test_invalid_every_time_fails_naming_the_classes() -> None:
    with Server(invalid_for(BAD)) as server:
        sleeps: list[float] = []
        with pytest.raises(LlmError) as caught:
            propose(CLASSES, make_config(server, max_retries=2, backoff_s=0.25), sleeps=sleeps)
        message = str(caught.value)
        assert "2 class(es)" in message
        assert "c0_heron" in message and "c1_robin" in message
        assert "c2_duck" not in message
        assert "not valid JSON: 'I cannot answer that'" in message
        assert "JSON without a non-empty list" in message
        assert (server.count("heron"), server.count("robin"), server.count("duck")) == (3, 3, 1)
        assert sorted(sleeps) == [0.25, 0.25, 0.5, 0.5]


@pytest.mark.parametrize(("fallback_concept", "expected"), [("{class}", "heron"), ("whole {class}", "whole heron")])
def test_invalid_every_time_with_fallback(fallback_concept: str, expected: str) -> None:
    with Server(invalid_for({"heron": "I cannot answer that"})) as server:
        config = make_config(server, max_retries=3, on_invalid="fallback", fallback_concept=fallback_concept)
        results, _ = propose(CLASSES, config)
        heron = results["c0_heron"]
        assert heron.concepts == [expected]
        assert heron.fallback is True
        assert (heron.requests, heron.retries, len(heron.errors)) == (4, 3, 4)
        assert heron.errors[-1] == "invalid answer: not valid JSON: 'I cannot answer that'"
        for key in ("c1_robin", "c2_duck"):
            assert results[key].concepts == ["long beak", "wings"]
            assert (results[key].fallback, results[key].requests, results[key].retries) == (False, 1, 0)
        assert server.count("heron") == 4


def test_invalid_answer_is_not_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    def script(name: str, earlier: int) -> Reply:
        if name == "robin" or earlier == 0:
            return Reply(200, "not json at all")
        return Reply(200, concepts_json("long beak", "wings"))

    with Server(script) as server:
        config = make_config(server, cache_dir=str(cache), max_retries=1, on_invalid="fallback")
        results, hits = propose({"heron": "heron", "robin": "robin"}, config)
        assert results["heron"].concepts == ["long beak", "wings"]
        assert (results["heron"].requests, results["heron"].retries, hits) == (2, 1, 0)
        assert (results["robin"].concepts, results["robin"].fallback) == (["robin"], True)
        (file,) = cache.glob("*.json")
        assert json.loads(file.read_text())["answer"] == concepts_json("long beak", "wings")

        again, hits = propose({"heron": "heron", "robin": "robin"}, config)
        assert (server.count("heron"), server.count("robin"), hits) == (2, 4, 1)
        assert again["heron"].concepts == ["long beak", "wings"]
        assert again["robin"].requests == 2
        assert len(list(cache.glob("*.json"))) == 1


@pytest.mark.parametrize("content", ["", None])
def test_empty_content_is_retried(content: str | None) -> None:
    with Server(first_then_valid(Reply(200, content))) as server:
        results, _ = propose({"heron": "heron"}, make_config(server))
        result = results["heron"]
        assert result.concepts == ["long beak", "wings"]
        assert (result.requests, result.retries, result.errors) == (2, 1, ["invalid answer: empty answer"])
        assert server.count("heron") == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, "RateLimitError"),
        (500, "InternalServerError"),
        (502, "BadGatewayError"),
        (503, "ServiceUnavailableError"),
        (504, "Timeout"),
        (520, "APIError"),  # litellm has no class for 520 (Cloudflare) or 529 (Anthropic overloaded)
        (529, "APIError"),
    ],
)
def test_transient_status_is_retried_after_backoff(status: int, error: str) -> None:
    with Server(first_then_valid(Reply(status))) as server:
        sleeps: list[float] = []
        results, _ = propose({"heron": "heron"}, make_config(server, backoff_s=0.5), sleeps=sleeps)
        result = results["heron"]
        assert result.concepts == ["long beak", "wings"]
        assert (result.requests, result.retries) == (2, 1)
        assert len(result.errors) == 1 and result.errors[0].startswith(f"{error}: ")
        assert sleeps == [0.5]
        assert server.count("heron") == 2


def test_backoff_doubles() -> None:
    with Server(first_then_valid(Reply(503), times=3)) as server:
        sleeps: list[float] = []
        results, _ = propose({"heron": "heron"}, make_config(server, backoff_s=0.5, max_retries=4), sleeps=sleeps)
        assert results["heron"].concepts == ["long beak", "wings"]
        assert (results["heron"].requests, results["heron"].retries) == (4, 3)
        assert sleeps == [0.5, 1.0, 2.0]
        assert server.count("heron") == 4


def test_transient_every_time_fails_with_last_error() -> None:
    with Server(lambda name, earlier: Reply(500)) as server:
        sleeps: list[float] = []
        with pytest.raises(LlmError, match="InternalServerError") as caught:
            propose({"heron": "heron"}, make_config(server, backoff_s=0.1, max_retries=2), sleeps=sleeps)
        assert "heron" in str(caught.value)
        assert server.count("heron") == 3
        assert sleeps == [0.1, 0.2]


def test_timeout_is_retried() -> None:
    with Server(first_then_valid(Reply(200, concepts_json("slow answer"), delay_s=2.0))) as server:
        start = time.monotonic()
        results, _ = propose({"heron": "heron"}, make_config(server, timeout_s=0.5))
        elapsed = time.monotonic() - start
        result = results["heron"]
        assert result.concepts == ["long beak", "wings"]
        assert (result.requests, result.retries) == (2, 1)
        assert result.errors[0].startswith("Timeout: ")
        assert server.count("heron") == 2
        assert elapsed < 1.9


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, "AuthenticationError"),
        (404, "NotFoundError"),
        (400, "BadRequestError"),
        (422, "BadRequestError"),
        (501, "APIError"),
    ],
)
def test_permanent_errors_stop_at_once(status: int, error: str) -> None:
    with Server(first_then_valid(Reply(status))) as server:
        sleeps: list[float] = []
        with pytest.raises(LlmError) as caught:
            propose({"heron": "heron"}, make_config(server, max_retries=4, backoff_s=0.5), sleeps=sleeps)
        message = str(caught.value)
        assert "openai/test-model" in message
        assert error in message
        assert "'heron'" in message
        assert f"scripted status {status}" in message
        assert server.count("heron") == 1
        assert sleeps == []


def test_forbidden_is_an_llm_error() -> None:
    with Server(first_then_valid(Reply(403))) as server:
        with pytest.raises(LlmError, match="openai/test-model"):
            propose({"heron": "heron"}, make_config(server, max_retries=4))
        assert server.count("heron") == 1


def test_api_key_from_named_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("CFT_TEST_KEY", "sk-secret-value")
    cache = tmp_path / "cache"
    with Server(mixed_answer) as server:
        results, _ = propose(CLASSES, make_config(server, api_key_env="CFT_TEST_KEY", cache_dir=str(cache)))
        assert results["c2_duck"].concepts == ["long beak", "wings"]
        authorizations = [{k.lower(): v for k, v in h.items()}["authorization"] for h in server.headers]
        assert authorizations == ["Bearer sk-secret-value"] * 3
        files = list(cache.rglob("*"))
        assert len([f for f in files if f.is_file()]) == 3
        for file in files:
            if file.is_file():
                assert "sk-secret-value" not in file.read_text()

        monkeypatch.delenv("CFT_TEST_KEY")
        with pytest.raises(LlmError, match="CFT_TEST_KEY") as caught:
            propose({"robin": "robin"}, make_config(server, api_key_env="CFT_TEST_KEY", max_retries=3))
        assert "OPENAI_API_KEY" not in str(caught.value)
        assert server.count() == 3


# --- keys: a missing or rejected key stops at once naming the variable; api_base servers need none ---

KEY_VARIABLES = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")


def without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def error_line(output: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    return line


@pytest.mark.parametrize(
    ("model", "variable"),
    [("openai/gpt-4o-mini", "OPENAI_API_KEY"), ("anthropic/claude-3-5-haiku-latest", "ANTHROPIC_API_KEY")],
)
def test_missing_key_fails_fast_naming_the_variable(monkeypatch: pytest.MonkeyPatch, model: str, variable: str) -> None:
    """litellm refuses before sending; the OpenAI route's refusal comes as an InternalServerError (500)
    that was once retried for 15+ s per class, its message cut off before the variable's name."""
    without_keys(monkeypatch)
    config = LlmConfig(model=model, cache_dir=None, backoff_s=2.0, max_retries=3, concurrency=2)  # retries: 2 + 4 + 8 s
    start = time.monotonic()
    with pytest.raises(LlmError) as caught:
        propose_concepts(CLASSES, config, ConceptFilterConfig(), progress=False)  # the real sleep
    elapsed = time.monotonic() - start
    message = str(caught.value)
    assert elapsed < 3.0, message
    assert message.startswith(
        f"{model}: no API key: set the environment variable {variable} (or name another variable in concepts.llm.api_key_env)."
    )
    provider_message = " ".join(str(caught.value.__cause__).split())
    assert provider_message in message  # whole, not cut off
    assert "\n" not in message
    if model.startswith("openai/"):
        assert "was not sent" in message and "Missing credentials" in message


def test_a_server_answering_401_stops_at_once_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with Server(lambda name, earlier: Reply(401, "Invalid API key")) as server:
        sleeps: list[float] = []
        with pytest.raises(LlmError) as caught:
            propose({"heron": "heron"}, make_config(server, max_retries=4, backoff_s=1.0), sleeps=sleeps)
        assert (server.count(), sleeps) == (1, [])
        message = str(caught.value)
        assert message.startswith(
            "openai/test-model: the API key in OPENAI_API_KEY was rejected: check it (or name another variable in concepts.llm.api_key_env)."
        )
        assert "AuthenticationError while asking about 'heron'" in message and "Invalid API key" in message
        assert "sk-test" not in message

        without_keys(monkeypatch)  # api_base and no key: the placeholder is sent, the server wants a real one
        with pytest.raises(LlmError) as caught:
            propose({"heron": "heron"}, make_config(server, max_retries=4, backoff_s=1.0), sleeps=sleeps)
        assert (server.count(), sleeps) == (2, [])
        assert str(caught.value).startswith(
            f"openai/test-model: no API key (the server at {server.url} asks for one): set the environment variable OPENAI_API_KEY (or name another variable in concepts.llm.api_key_env)."
        )


def test_a_custom_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFT_CUSTOM_KEY", "sk-custom-secret")
    with Server(lambda name, earlier: Reply(401)) as server:
        with pytest.raises(LlmError) as caught:
            propose({"heron": "heron"}, make_config(server, api_key_env="CFT_CUSTOM_KEY", max_retries=4, backoff_s=1.0))
        message = str(caught.value)
        assert message.startswith("openai/test-model: the API key in CFT_CUSTOM_KEY was rejected: check it.")
        assert "OPENAI_API_KEY" not in message and "sk-custom-secret" not in message
        assert server.count() == 1
        assert {k.lower(): v for k, v in server.headers[0].items()}["authorization"] == "Bearer sk-custom-secret"

    monkeypatch.delenv("CFT_CUSTOM_KEY")
    without_keys(monkeypatch)
    config = LlmConfig(model="openai/gpt-4o-mini", api_key_env="CFT_CUSTOM_KEY", cache_dir=None, backoff_s=2.0)
    with pytest.raises(
        LlmError, match=r"concepts.llm.api_key_env: environment variable CFT_CUSTOM_KEY is not set"
    ) as caught:
        propose_concepts(CLASSES, config, ConceptFilterConfig(), progress=False)
    assert "OPENAI_API_KEY" not in str(caught.value)


def test_api_base_without_a_key_works(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """vLLM, llama.cpp or a proxy that checks no key: the OpenAI client gets a placeholder, never stored."""
    without_keys(monkeypatch)
    cache = tmp_path / "cache"
    with Server(mixed_answer) as server:
        results, _ = propose(CLASSES, make_config(server, cache_dir=str(cache)))
        assert {key: result.concepts for key, result in results.items()} == {
            key: ["long beak", "wings"] for key in CLASSES
        }
        assert {result.requests for result in results.values()} == {1}
        authorizations = [{k.lower(): v for k, v in h.items()}.get("authorization") for h in server.headers]
        assert authorizations == [f"Bearer {PLACEHOLDER_KEY}"] * 3
        for file in cache.glob("*.json"):
            assert "api_key" not in json.loads(file.read_text())["request"]

        monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")  # a key that is set is sent, not the placeholder
        propose({"robin": "robin"}, make_config(server))
        assert {k.lower(): v for k, v in server.headers[-1].items()}["authorization"] == "Bearer sk-from-env"


def test_long_provider_messages_are_not_cut_off() -> None:
    long_message = "The request is invalid:\n" + " ".join(f"detail{i}" for i in range(200)) + " END-OF-MESSAGE"
    with Server(lambda name, earlier: Reply(400, long_message)) as server:
        with pytest.raises(LlmError) as caught:
            propose({"heron": "heron"}, make_config(server))
        message = str(caught.value)
        assert " ".join(long_message.split()) in message
        assert "\n" not in message
        assert server.count() == 1


def test_the_stage_exits_2_with_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import typer
    import yaml
    from typer.testing import CliRunner

    from stages.concepts import concepts

    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(concepts)
    without_keys(monkeypatch)
    monkeypatch.delenv("CFT_TRACEBACK", raising=False)
    (tmp_path / "classes.txt").write_text("heron\nrobin\n")
    llm = {"model": "openai/gpt-4o-mini", "cache_dir": None, "backoff_s": 2.0, "max_retries": 3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"concepts": {"source": "llm", "llm": llm}}))
    start = time.monotonic()
    result = CliRunner().invoke(
        app,
        [
            "--params",
            str(tmp_path / "params.yaml"),
            "--classes",
            str(tmp_path / "classes.txt"),
            "--out",
            str(tmp_path / "concepts"),
        ],
    )
    assert time.monotonic() - start < 3.0
    assert result.exit_code == 2, result.output
    line = error_line(result.output)
    assert line.startswith("error: openai/gpt-4o-mini: no API key: set the environment variable OPENAI_API_KEY")
    assert "Missing credentials" in line
    assert "Traceback" not in result.output
    assert not (tmp_path / "concepts").exists()


def test_concurrency_runs_classes_in_parallel_and_keeps_class_order() -> None:
    names = [f"bird{i}" for i in range(8)]
    delays = {name: (0.4 if i == 0 else 0.3) for i, name in enumerate(names)}

    def script(name: str, earlier: int) -> Reply:
        return Reply(200, concepts_json(f"part {name[-1]}", "wings"), delay_s=delays.get(name, 0.0))

    with Server(script) as server:
        propose({"warmup": "warmup"}, make_config(server))
        classes = {f"k{name}": name for name in reversed(names)}
        start = time.monotonic()
        results, _ = propose(classes, make_config(server, concurrency=4))
        elapsed = time.monotonic() - start
        assert 0.6 <= elapsed < 1.6
        assert list(results) == list(classes)
        assert [results[k].concepts[0] for k in classes] == [f"part {name[-1]}" for name in reversed(names)]
        assert server.count() == 9


def test_samples_use_distinct_seeds_and_merge(tmp_path: Path) -> None:
    answers = [concepts_json("long beak", "wings"), concepts_json("Wings", "webbed feet", "long beak")]

    def script(name: str, earlier: int) -> Reply:
        return Reply(200, answers[earlier] if earlier < 2 else "unexpected")

    with Server(script) as server:
        config = make_config(server, samples=2, temperature=0.7, cache_dir=str(tmp_path / "cache"))
        results, hits = propose({"kh": "heron", "kd": "duck"}, config)
        assert hits == 0
        for key, name in (("kh", "heron"), ("kd", "duck")):
            result = results[key]
            assert result.concepts == ["long beak", "wings", "webbed feet"]
            assert result.report.duplicate == ["wings", "long beak"]
            assert (result.report.proposed, result.requests, result.retries) == (5, 2, 0)
            bodies = bodies_for(server, name)
            assert [b["seed"] for b in bodies] == [0, 1]
            assert {b["temperature"] for b in bodies} == {0.7}
        assert server.count() == 4

        again, hits = propose({"kh": "heron", "kd": "duck"}, config)
        assert (hits, server.count()) == (4, 4)
        assert again["kd"].concepts == ["long beak", "wings", "webbed feet"]


def test_one_invalid_sample_still_gives_concepts() -> None:
    def script(name: str, earlier: int) -> Reply:
        return Reply(200, concepts_json("long beak", "wings")) if earlier == 0 else Reply(200, "garbage")

    with Server(script) as server:
        results, _ = propose({"heron": "heron"}, make_config(server, samples=2, temperature=0.7, max_retries=1))
        result = results["heron"]
        assert result.concepts == ["long beak", "wings"]
        assert (result.requests, result.retries, result.fallback) == (3, 1, False)
        assert [b["seed"] for b in server.requests] == [0, 1, 1]


def test_a_fatal_error_stops_asking_further_classes() -> None:
    with Server(lambda name, earlier: Reply(401)) as server:
        config = make_config(server, concurrency=1)
        with pytest.raises(LlmError, match="AuthenticationError"):
            propose({f"class{i}": f"class{i}" for i in range(6)}, config)
        assert server.count() < 6
