"""The openai judge against a real chat-completions server on 127.0.0.1 started by the test:
top logprobs when the server returns them, else generate-and-parse; a parse failure is a
`parse_error` with a NULL grade (never 0) and survives the validated publish."""
from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest

from schemas.config import JudgeConfig, catalog_config
from tasks.judge import analysis, scoring as J


class JudgeServer:
    """Scripted by markers in the query text of the prompt:
    LOGPROBS[n] -> with logprobs=true, the first token's top logprobs favour digit n;
    REPLY[text] -> the generated answer (no logprobs are ever returned for it);
    DENY        -> HTTP 400 (not retried)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.images = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, obj: dict):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                content = body["messages"][-1]["content"]
                if isinstance(content, list):  # a VLM request: image part + text part
                    server.images += sum(1 for c in content if c["type"] == "image_url")
                    content = next(c["text"] for c in content if c["type"] == "text")
                text = content
                query = text[text.index("<<<QUERY>>>"):text.index("<<<END QUERY>>>")]
                if "DENY" in query:
                    return self._send(400, {"error": {"message": "content policy"}})
                lp = re.search(r"LOGPROBS\[(\d)\]", query)
                reply = re.search(r"REPLY\[([^\]]*)\]", query)
                choice = {"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": reply.group(1) if reply else "1"}}
                if body.get("logprobs") and lp:
                    top = [{"token": d, "logprob": math.log(0.7 if d == lp.group(1) else 0.1)} for d in "0123"]
                    choice["message"]["content"] = lp.group(1)
                    choice["logprobs"] = {"content": [{"token": lp.group(1), "logprob": math.log(0.7),
                                                       "top_logprobs": top}]}
                self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [choice]})

        return Handler


def pairs(queries: list[str]) -> pa.Table:
    n = len(queries)
    return pa.table({"query_id": [f"q{i}" for i in range(n)], "query_text": queries,
                     "doc_id": [f"d{i}" for i in range(n)], "doc_text": ["some passage text"] * n,
                     "image_path": pa.array([None] * n, pa.string())}, schema=J.PAIRS)


@pytest.fixture()
def server():
    with JudgeServer() as s:
        yield s


def cfg_for(server, **kw) -> JudgeConfig:
    return JudgeConfig(backend="openai", model="judge-model", revision="2024-05",
                       openai={"base_url": server.base_url, "api_key_env": None, "max_retries": 1,
                               "backoff_s": 0.0, "timeout_s": 10}, **kw)


def test_logprob_path_reads_label_probabilities(server):
    judge = J.Judge(cfg_for(server))
    out = judge(pairs(["LOGPROBS[2] first", "LOGPROBS[0] second"])).to_pylist()
    assert [r["status"] for r in out] == ["ok", "ok"] and [r["grade"] for r in out] == [2, 0]
    assert out[0]["p_grade"] == pytest.approx([0.1, 0.1, 0.7, 0.1])
    assert out[0]["expected_grade"] == pytest.approx(0.1 + 1.4 + 0.3)
    assert all(b.get("logprobs") and b["max_tokens"] == 1 for b in server.requests)
    assert out[0]["judge"].startswith("judge-model@2024-05#")


def test_no_logprobs_falls_back_to_generate_and_parse(server):
    judge = J.Judge(cfg_for(server))
    out = judge(pairs(["REPLY[Relevance: 3] a", "REPLY[it is fairly relevant] b",
                       "REPLY[I cannot judge this content.] c", "DENY d", "LOGPROBS[1] e"])).to_pylist()
    assert [r["status"] for r in out] == ["ok", "parse_error", "refused", "error", "ok"]
    assert [r["grade"] for r in out] == [3, None, None, None, 1]
    assert out[0]["p_grade"] == [0.0, 0.0, 0.0, 1.0] and out[0]["raw"] == "Relevance: 3"
    assert out[1]["p_grade"] is None and out[1]["expected_grade"] is None  # never a silent 0
    assert out[1]["raw"] == "it is fairly relevant" and "HTTP 400" in out[3]["raw"]
    generated = [b for b in server.requests if not b.get("logprobs")]
    assert len(generated) == 3 and all(b["max_tokens"] == 8 for b in generated)


def test_forced_generate_scoring_never_asks_for_logprobs(server):
    judge = J.Judge(cfg_for(server, scoring="generate"))
    out = judge(pairs(["LOGPROBS[2] REPLY[Score: 2]", "REPLY[2 or 3]"])).to_pylist()
    assert [(r["status"], r["grade"]) for r in out] == [("ok", 2), ("parse_error", None)]
    assert not any(b.get("logprobs") for b in server.requests)


def test_parse_errors_publish_with_null_grades_and_stay_out_of_agreement(server, tmp_path):
    from flows.imports import import_qrels
    from tasks.judge.stage import Judge
    from tests.stages import run_one

    cfg = catalog_config(tmp_path / "catalog.duckdb", judge=cfg_for(server).model_dump())
    (tmp_path / "human.txt").write_text("q0 0 d0 2\nq1 0 d1 1\nq2 0 d2 0\n")
    import_qrels(cfg, [tmp_path / "human.txt"])
    (tmp_path / "topics.tsv").write_text("q0\tLOGPROBS[2] a\nq1\tREPLY[no idea] b\nq2\tREPLY[0] c\n")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"docid": f"d{i}", "doc": "some passage text"}) + "\n"
                                                 for i in range(3)))
    files = {"pairs": str(tmp_path / "human.txt"), "queries": str(tmp_path / "topics.tsv"),
             "docs": str(tmp_path / "docs.jsonl")}
    _, summary = run_one(cfg, Judge(cfg, **files))
    assert summary["notes"]["statuses"] == {"ok": 2, "parse_error": 1, "refused": 0}
    from tasks.runtime.catalog import Catalog

    catalog = Catalog(cfg.catalog_path)
    rows = catalog.query("SELECT query_id, grade, status FROM judgments WHERE judge = ? ORDER BY query_id",
                         [summary["notes"]["judge"]]).to_pylist()
    assert rows[1] == {"query_id": "q1", "grade": None, "status": "parse_error"}
    agree = analysis.agreement(catalog, "human").to_pylist()
    assert agree[0]["n_pairs"] == 2 and agree[0]["kappa"] == pytest.approx(1.0)
    before = len(server.requests)
    _, again = run_one(cfg, Judge(cfg, **files))
    assert again["cache_hits"] == 3 and again["model_calls"] == 0 and len(server.requests) == before


def test_pixels_reach_a_vlm_judge_as_data_urls(server, tmp_path):
    from PIL import Image

    img = tmp_path / "cat.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(img)
    t = pairs(["LOGPROBS[3] a red square", "LOGPROBS[1] text only"])
    t = t.set_column(t.schema.get_field_index("image_path"), "image_path", pa.array([str(img), None]))
    out = J.Judge(cfg_for(server, images="pixels"))(t).to_pylist()
    assert [r["grade"] for r in out] == [3, 1] and server.images == 1
    vlm = [r["messages"][-1]["content"] for r in server.requests if isinstance(r["messages"][-1]["content"], list)]
    assert len(vlm) == 1 and vlm[0][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")  # RGB photos go as JPEG
