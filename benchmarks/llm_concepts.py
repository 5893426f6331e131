"""`cft concepts --classes imagenet-1k` against a local OpenAI-compatible server, then from the cache.

The server (tests/llm_server.py) answers every class with a scripted JSON list after a fixed
latency, so this measures the stage's own overhead and its concurrency, not a real model:

    python benchmarks/llm_concepts.py --latency 0.2 --concurrency 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.llm_server import Reply, ScriptedLLM, concepts_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per answer")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    def script(name: str, earlier: int) -> Reply:
        return Reply(
            200,
            concepts_json(
                "distinctive shape", "main body", "surface texture", f"{name.split()[0]} colour", "background"
            ),
            args.latency,
        )

    with tempfile.TemporaryDirectory() as work, ScriptedLLM(script) as server:
        root = Path(work)
        params = {
            "concepts": {
                "source": "llm",
                "llm": {
                    "model": "openai/local-test",
                    "api_base": server.url,
                    "concurrency": args.concurrency,
                    "cache_dir": str(root / "cache"),
                },
            }
        }
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "OPENAI_API_KEY": "sk-local", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        command = [
            sys.executable,
            "-m",
            "stages.cli",
            "concepts",
            "--params",
            str(root / "params.yaml"),
            "--classes",
            "imagenet-1k",
            "--out",
            str(root / "concepts"),
        ]
        for label in ("first run", "rerun (cache)"):
            before = server.count()
            started = time.perf_counter()
            subprocess.run(
                command, check=True, env=env, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL
            )
            seconds = time.perf_counter() - started
            stats = json.loads((root / "concepts" / "concepts.json").read_text())
            kept = sum(len(v) for v in stats["classes"].values())
            print(
                f"{label:14s}: {len(stats['classes'])} classes, {kept} concepts, {server.count() - before} requests, {seconds:.1f} s (latency {args.latency} s, concurrency {args.concurrency})"
            )


if __name__ == "__main__":
    main()
