"""Scoring (query, document) pairs on the 0-3 scale; a grade is never invented.

- `hf`: one forward pass reads the next-token probabilities of "0".."3" at the answer
  position (LabelScorer.label_probabilities): p_grade, grade = argmax, expected_grade.
- `openai`: the first token's top logprobs when the server returns them; otherwise the
  answer is generated and parsed. An answer with no grade in it is `parse_error` (or
  `refused`) with a NULL grade, never 0. A request that fails for good is an error: the pair
  is quarantined with the reason and retried on the next run.
- `offline`: the embedding-similarity grader of tasks.judge.offline_judge, on cosines the stage
  computed from vectors already in the embed cache when it could (column `cosine`).
- `cross_encoder`: a four-label CrossEncoder (tasks.judge.cross_encoder): softmax p_grade.
- `features`: a feature judge (tasks.judge.features): an ordinal model over cosine, BM25, length.
  A trained judge's grade is the interval of its expected grade (its manifest's cutpoints).
A judge's identity is model@revision + "#" + prompt hash (+ "+generate" when forced to
generate and parse; the offline judge: its encoder space + "#" + its parameter hash; the
cross-encoder: cross-encoder:<model>@<weights hash>).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa

from schemas.config import JudgeConfig
from schemas.tables import JUDGMENTS
from tasks.judge.cross_encoder import TRAINED
from tasks.judge.prompt import parse_grade, render
from tasks.runtime.ids import fingerprint
from tasks.runtime.stage import KEY

PROMPT = "judge_graded"
LABELS = ["0", "1", "2", "3"]
OUTPUTS = pa.schema([("p_grade", pa.list_(pa.float32())), ("status", pa.string()), ("raw", pa.string())])
PAIRS = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("query_text", pa.string()),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("doc_text", pa.string()),
    pa.field("image_path", pa.string()),  # absolute path of the document's image, if any
])


def load_template(cfg: JudgeConfig) -> tuple[str, str]:
    from tasks.prompts import load_prompt

    return load_prompt(PROMPT, cfg.prompt_version, cfg.prompts_dir)


def judge_name(cfg: JudgeConfig, prompt_sha: str | None = None, model_path: str | None = None) -> str:
    """model@revision#prompt-hash; the offline judge names its encoder space and parameters, the
    cross-encoder its model and weights."""
    if cfg.backend in TRAINED:
        from tasks.judge.cross_encoder import judge_identity

        if model_path is None:
            raise ValueError("a trained judge's name needs its model folder")
        return judge_identity(cfg.model, model_path, cfg.backend)
    if cfg.backend == "offline":
        from tasks.backends.embedders import text_space

        o = cfg.offline
        return f"offline-cosine:{text_space(o.encoder)}#{fingerprint([o.thresholds, o.temperature])[:8]}"
    from tasks.backends.registry import backend_name

    sha = prompt_sha or load_template(cfg)[1]
    how = "+generate" if cfg.scoring == "generate" else ""  # a different method is a different judge
    return f"{backend_name(cfg, 'offline')}#{sha[:8]}{how}"


def judgment_rows(pairs: pa.Table, judge: str, p: list, statuses: list[str], raw: list,
                  cuts: list[float] | None = None) -> pa.Table:
    """Arrow judgments from per-pair p_grade (None unless scored), status and raw text. grade is
    argmax p_grade, or with a trained judge's `cuts` the interval of the expected grade."""
    grades, expected, plist = [], [], []
    for pi, st in zip(p, statuses):
        if pi is None or st != "ok":
            grades.append(None), expected.append(None), plist.append(None)
            continue
        pi = np.asarray(pi, np.float64)
        pi = pi / pi.sum()
        e = float(pi @ np.arange(4))
        grades.append(int(np.argmax(pi)) if cuts is None else int(np.searchsorted(cuts, e, side="right")))
        expected.append(e)
        plist.append([float(x) for x in pi])
    return pa.table({
        "query_id": pairs["query_id"], "doc_id": pairs["doc_id"],
        "judge": pa.array([judge] * pairs.num_rows, pa.string()),
        "grade": pa.array(grades, pa.int8()), "p_grade": pa.array(plist, pa.list_(pa.float32(), 4)),
        "expected_grade": pa.array(expected, pa.float32()), "status": pa.array(statuses, pa.string()),
        "raw": pa.array(raw, pa.string()),
    }, schema=JUDGMENTS)


def _onehot(g: int) -> list[float]:
    return [1.0 if i == g else 0.0 for i in range(4)]


class Judge:
    """A judge built once (in a Ray actor or in-process) that scores batches of pairs."""

    def __init__(self, cfg: JudgeConfig, device: str = "auto", backend=None, model_path: str | None = None):
        self.cfg = cfg
        self.backend = backend
        self.device = "cpu" if device == "auto" else device
        if cfg.backend == "offline":
            self.template, sha = None, None  # the encoder loads on first use: cosines may come precomputed
        elif cfg.backend == "cross_encoder":
            from tasks.judge.cross_encoder import CrossEncoderGrader

            self.template, sha = None, None
            self.backend = backend or CrossEncoderGrader(model_path, self.device, cfg.cross_encoder.max_length,
                                                         max(cfg.batch_size, 32))
        elif cfg.backend == "features":
            from tasks.judge.features import FeatureGrader

            self.template, sha = None, None
            self.backend = backend or FeatureGrader(model_path)
        else:
            from tasks.backends.registry import build_label_scorer

            self.template, sha = load_template(cfg)
            self.backend = backend or build_label_scorer(cfg, device)
        self.name = judge_name(cfg, sha, model_path)

    def embedder(self):
        if self.backend is None:
            from tasks.backends.embedders import local_text_embedder

            self.backend = local_text_embedder(self.cfg.offline.encoder.model_dump_json(), self.device)
        return self.backend

    def prompts(self, pairs: pa.Table) -> list:
        out = []
        for q, d, img in zip(pairs["query_text"].to_pylist(), pairs["doc_text"].to_pylist(),
                             pairs["image_path"].to_pylist()):
            text = render(self.template, q, d or "", self.cfg.max_doc_chars)
            if img and self.cfg.images == "pixels" and self.cfg.backend == "openai":
                from PIL import Image, ImageOps

                from tasks.backends.openai_compat import image_data_url

                if os.path.realpath(img) != img:  # resolved inside the corpus when the pair was made
                    raise ValueError(f"image {img} changed into a link since it was checked; not sent")
                with Image.open(img) as im:
                    url = image_data_url(ImageOps.exif_transpose(im))
                text = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                     {"type": "text", "text": text}]}]
            out.append(text)
        return out

    def __call__(self, pairs: pa.Table) -> pa.Table:
        if pairs.num_rows == 0:
            return JUDGMENTS.empty_table()
        if self.cfg.backend == "offline":
            return self._offline(pairs)
        if self.cfg.backend in TRAINED:
            return self._trained(pairs)
        prompts = self.prompts(pairs)
        # similar lengths share a batch (less padding); results come back in the input order
        order = np.argsort([len(p) if isinstance(p, str) else len(json.dumps(p)) for p in prompts], kind="stable")
        pairs, prompts = pairs.take(pa.array(order)), [prompts[i] for i in order]
        score = self._generate if self.cfg.scoring == "generate" else self._label_probs
        out = score(pairs, prompts)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return out.take(pa.array(inverse))

    def _offline(self, pairs: pa.Table) -> pa.Table:
        """Cosines given with the pairs (from the embed cache) are used as they are; the rest are embedded."""
        from tasks.judge import offline_judge

        given = pairs["cosine"].to_pylist() if "cosine" in pairs.column_names else [None] * pairs.num_rows
        s = np.array([np.nan if c is None else c for c in given], np.float32)
        todo = np.flatnonzero(np.isnan(s))
        if len(todo):
            q, d = pairs["query_text"].to_pylist(), pairs["doc_text"].to_pylist()
            s[todo] = offline_judge.cosines(self.embedder(), [q[i] for i in todo], [d[i] for i in todo])
        p = offline_judge.grade_probabilities(s, self.cfg.offline.thresholds, self.cfg.offline.temperature)
        return judgment_rows(pairs, self.name, list(p), ["ok"] * pairs.num_rows,
                             [json.dumps({"cosine": round(float(x), 6)}) for x in s])

    def _trained(self, pairs: pa.Table) -> pa.Table:
        queries = pairs["query_text"].to_pylist()
        docs = [(d or "")[: self.cfg.max_doc_chars] for d in pairs["doc_text"].to_pylist()]
        cos = None
        if getattr(self.backend, "reads_cosine", False):  # a correction of the cosine judge reads the cosines too
            from tasks.backends.embedders import local_text_embedder
            from tasks.judge import offline_judge
            from tasks.judge.cross_encoder import prior_encoder

            given = pairs["cosine"].to_pylist() if "cosine" in pairs.column_names else [None] * pairs.num_rows
            cos = np.array([np.nan if c is None else c for c in given], np.float64)
            todo = np.flatnonzero(np.isnan(cos))
            if len(todo):
                enc = local_text_embedder(prior_encoder(self.backend.path).model_dump_json(), self.device)
                cos[todo] = offline_judge.cosines(enc, [queries[i] for i in todo],
                                                  [pairs["doc_text"][int(i)].as_py() for i in todo])
        p = self.backend.p_grade(queries, docs, cos)
        return judgment_rows(pairs, self.name, list(p), ["ok"] * pairs.num_rows,
                             [json.dumps({"p": [round(float(x), 6) for x in row]}) for row in p])

    def _label_probs(self, pairs: pa.Table, prompts: list) -> pa.Table:
        from tasks.backends.registry import outcomes

        if hasattr(self.backend, "label_outcomes"):  # openai: top logprobs, per item
            outs = self.backend.label_outcomes(prompts, LABELS)
        else:
            outs = outcomes(lambda ps: list(self.backend.label_probabilities(ps, LABELS)), prompts)
        p, status, raw = [None] * len(outs), ["error"] * len(outs), [None] * len(outs)
        fallback = []
        for i, o in enumerate(outs):
            if o.ok:
                p[i], status[i] = o.value, "ok"
                raw[i] = json.dumps({"p": [round(float(x), 6) for x in o.value]})
            elif o.no_logprobs:
                fallback.append(i)
            else:
                raw[i] = o.error
        if fallback:  # the server gives no logprobs: generate and parse those
            sub = self._generate(pairs.take(fallback), [prompts[i] for i in fallback])
            for j, i in enumerate(fallback):
                st = sub["status"][j].as_py()
                status[i], raw[i] = st, sub["raw"][j].as_py()
                p[i] = sub["p_grade"][j].as_py()
        return judgment_rows(pairs, self.name, p, status, raw)

    def _generate(self, pairs: pa.Table, prompts: list) -> pa.Table:
        from tasks.backends.registry import generate_outcomes

        outs = generate_outcomes(self.backend, prompts, self.cfg.max_new_tokens)
        p, status, raw = [], [], []
        for o in outs:
            if not o.ok:
                p.append(None), status.append("error"), raw.append(o.error)
                continue
            g, st = parse_grade(o.value)
            p.append(_onehot(g) if g is not None else None)
            status.append(st)
            raw.append(o.value)
        return judgment_rows(pairs, self.name, p, status, raw)


class JudgeWork:
    """The judge stage's work: builds the judge once, scores batches of pairs. A pair whose request
    failed for good (status `error`) is an error row: quarantined and retried next run."""

    def __init__(self, args: dict, device: str = "cpu"):
        self.judge = Judge(JudgeConfig.model_validate(args["cfg"]), device, model_path=args.get("model_path"))

    def __call__(self, batch: pa.Table) -> pa.Table:
        pairs = pa.table({"query_id": batch[KEY], "query_text": batch["query_text"], "doc_id": batch[KEY],
                          "doc_text": batch["doc_text"], "image_path": batch["image_path"]})
        if "cosine" in batch.column_names:
            pairs = pairs.append_column("cosine", batch["cosine"])
        out = self.judge(pairs)
        status = out["status"].to_pylist()
        raw = out["raw"].to_pylist()
        error = [(r or "the judge request failed") if s == "error" else None for s, r in zip(status, raw)]
        return pa.table({KEY: batch[KEY], "p_grade": pa.array(out["p_grade"].to_pylist(), pa.list_(pa.float32())),
                         "status": out["status"], "raw": out["raw"], "error": pa.array(error, pa.string())})
