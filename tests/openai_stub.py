"""A real chat-completions HTTP server on 127.0.0.1 for tests, with scripted misbehaviour.

The last user text of a request picks the behaviour:
- contains `FLAKY429` / `FLAKY500`: the first two requests for that text get 429 / 500, then 200;
- contains `ALWAYS500`: every request gets 500;
- contains `SLOW`: the reply comes after `slow_s` seconds (past the client's timeout);
- contains `BADJSON`: a 200 whose body is not JSON;
- contains `NOLOGPROBS`: no logprobs even when asked;
- contains `ECHOKEY400` / `ECHOKEY500`: an error body that echoes the Authorization header where
  the client cuts error bodies (a server that reflects the request, as some do);
- an image 13 pixels wide: every request gets 500; 17 pixels wide: an empty answer;
- otherwise 200 with content `echo: <text>` (or, with an image part, `an image of <n> bytes`).
With `logprobs: true` the first token's top_logprobs favour the digit named after `PREFER=`.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _width(data_url: str) -> int:
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as im:
        return im.size[0]


class StubServer:
    def __init__(self, api_key: str | None = None, slow_s: float = 2.0):
        self.api_key = api_key
        self.slow_s = slow_s
        self.seen = Counter()
        self.auth_failures = 0
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "StubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                with server._lock:
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    self._handle()
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _handle(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    server.auth_failures += 1
                    return self._send(401, b'{"error": "bad key"}')
                text, image_bytes, image_width = "", 0, 0
                for m in body["messages"]:
                    if m["role"] != "user":
                        continue
                    parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
                    for p in parts:
                        if p["type"] == "text":
                            text = p["text"]
                        elif p["type"] == "image_url":
                            image_bytes = len(p["image_url"]["url"])
                            image_width = _width(p["image_url"]["url"])
                with server._lock:
                    server.seen[text] += 1
                    n = server.seen[text]
                time.sleep(0.05)  # long enough for concurrent requests to overlap
                for code, cut in ((400, 300), (500, 200)):
                    if f"ECHOKEY{code}" in text:  # the key straddles where the client cuts the body
                        auth = self.headers.get("Authorization", "")
                        return self._send(code, ("x" * (cut - len("Bearer ") - 8) + auth).encode(), "text/plain")
                if image_width == 17:
                    return self._send(200, json.dumps({"choices": [{"index": 0, "message": {
                        "role": "assistant", "content": "  "}}]}).encode())
                if image_width == 13 or "ALWAYS500" in text or ("FLAKY500" in text and n <= 2):
                    return self._send(500, b'{"error": "internal"}')
                if "FLAKY429" in text and n <= 2:
                    return self._send(429, b'{"error": "rate limited"}')
                if "SLOW" in text:
                    time.sleep(server.slow_s)
                if "BADJSON" in text:
                    return self._send(200, b'{"choices": [ {"message": ')
                content = f"an image of {image_bytes} bytes" if image_bytes else f"echo: {text}"
                choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                if body.get("logprobs") and "NOLOGPROBS" not in text:
                    prefer = text.split("PREFER=")[1][0] if "PREFER=" in text else "0"
                    top = [{"token": prefer, "logprob": -0.1}]
                    top += [{"token": d, "logprob": -3.0} for d in "0123" if d != prefer]
                    top += [{"token": "x", "logprob": -5.0}]
                    choice["logprobs"] = {"content": [{"token": prefer, "logprob": -0.1,
                                                       "top_logprobs": top[: body.get("top_logprobs", 5)]}]}
                self._send(200, json.dumps({"id": "c1", "object": "chat.completion", "model": body["model"],
                                            "choices": [choice]}).encode())

        return Handler
