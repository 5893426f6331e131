"""A scripted OpenAI-compatible chat server on 127.0.0.1, for testing the LLM path offline.

It serves ``POST /v1/chat/completions``; a script decides each answer from the class named in the
prompt and how many times that class was asked before. litellm reaches it through its ordinary
``openai/<model>`` route with ``api_base``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_CLASS = re.compile(r'recognising a "(.+?)"')


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the answer; with an error status, the error message (None: "scripted status N")
    delay_s: float = 0.0


Script = Callable[[str, int], Reply]  # (class name, earlier requests for it) -> reply


def concepts_json(*concepts: str) -> str:
    return json.dumps({"concepts": list(concepts)})


class ScriptedLLM:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def count(self, class_name: str | None = None) -> int:
        with self._lock:
            return len(self.requests) if class_name is None else self._counts.get(class_name, 0)

    def __enter__(self) -> ScriptedLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _reply_for(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        match = _CLASS.search(body["messages"][-1]["content"])
        name = match.group(1) if match else ""
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            earlier = self._counts.get(name, 0)
            self._counts[name] = earlier + 1
        return self.script(name, earlier)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                reply = server._reply_for(body, dict(self.headers))
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.status == 200:
                    payload = {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "test"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                    }
                else:
                    message = f"scripted status {reply.status}" if reply.content is None else reply.content
                    payload = {"error": {"message": message, "type": "test_error", "code": reply.status}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        return Handler
