"""Caption stage: a caption for every image (image documents and images inside interleaved ones).

Existing alt-text is kept as its own caption (`source=alt_text`); a configured model adds a
`source=model` caption recording model@revision, prompt version and generation parameters.
Units are images keyed by image sha256, so documents sharing an image share one model call and
only images never captioned by this captioner reach the model. An image the model fails on
(exception, out of memory, empty output) is quarantined with the error; the rest go on.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import CaptionConfig
from schemas.tables import CAPTIONS
from tasks.backends.offline import ALT_TEXT
from tasks.prompts import load_prompt
from tasks.runtime.ids import cache_key, record_id
from tasks.runtime.stage import KEY, UNIT, Assembled, Read, Resources, Stage, Units, Work

PROMPT = "caption"
OUTPUTS = pa.schema([("text", pa.string()), ("captioner", pa.string())])


class Caption(Stage):
    name = "caption"
    section = "caption"
    reads = (Read("documents"),)
    writes = ("captions",)
    description = "alt-text captions, plus model captions when a captioner is configured"

    def prompt(self) -> tuple[str | None, str | None]:
        """(prompt text, its sha); the offline backend uses no prompt."""
        if self.cfg.backend == "offline":
            return None, None
        return load_prompt(PROMPT, self.cfg.prompt_version)

    def prompt_shas(self) -> dict[str, str]:
        sha = self.prompt()[1]
        return {PROMPT: sha} if sha else {}

    def units(self, inputs) -> Units:
        docs = inputs["documents"]
        docs = docs.filter(pc.is_valid(docs["image_uri"]))
        fp = self.work_fingerprint()
        keys = [cache_key(s, fp) for s in docs["image_sha256"].to_pylist()]
        return Units(pa.table({UNIT: docs["doc_id"], KEY: pa.array(keys, pa.string()), "image_uri": docs["image_uri"],
                               "image_sha256": docs["image_sha256"], "alt_text": docs["alt_text"]}))

    def work(self) -> Work | None:
        cfg = self.cfg
        if cfg.backend == "offline":
            return None
        args = {"cfg": cfg.model_dump(mode="json"), "corpus_root": str(self.config.corpus_root),
                "prompt": self.prompt()[0]}
        return Work(CaptionWork, args, ["image_uri"], OUTPUTS,
                    Resources.of(cfg, where="local" if cfg.backend == "openai" else "ray",
                                 uses_gpu=cfg.backend == "hf"))

    def payload(self, unit: dict) -> dict:
        return {"image_uri": unit["image_uri"], "image_sha256": unit["image_sha256"]}

    def assemble(self, inputs, units: pa.Table, results: pa.Table | None) -> Assembled:
        """Alt-text captions for every image that has one; a model caption for every image the
        captioner captioned. Offline, an image without alt-text is quarantined."""
        cfg = self.cfg
        rows, produced, quarantined = [], [], []
        model = {} if results is None else dict(zip(results[KEY].to_pylist(),
                                                    zip(results["text"].to_pylist(), results["captioner"].to_pylist())))
        params = json.dumps({"prompt_sha256": self.prompt()[1], "max_new_tokens": cfg.max_new_tokens,
                             "temperature": cfg.temperature, "dtype": cfg.dtype}, sort_keys=True)
        for u in units.to_pylist():
            doc = u[UNIT]
            if u["alt_text"]:
                rows.append({"caption_id": record_id(ALT_TEXT, doc, u["alt_text"]), "doc_id": doc,
                             "image_sha256": u["image_sha256"], "text": u["alt_text"], "source": ALT_TEXT,
                             "captioner": ALT_TEXT, "prompt_version": None, "params": None})
            if cfg.backend == "offline":
                if u["alt_text"]:
                    produced.append(doc)
                else:
                    quarantined.append({"key": doc, "reason": "no caption: the image has no alt-text and "
                                        "caption.backend is offline (configure a captioning model to caption it)",
                                        "payload": {"image_uri": u["image_uri"]}})
                continue
            text, captioner = model[u[KEY]]
            rows.append({"caption_id": record_id("model", doc, u[KEY]), "doc_id": doc,
                         "image_sha256": u["image_sha256"], "text": text, "source": "model", "captioner": captioner,
                         "prompt_version": cfg.prompt_version, "params": params})
            produced.append(doc)
        return Assembled({"captions": pa.Table.from_pylist(rows, schema=CAPTIONS)}, produced, quarantined)

    def report(self, outcome) -> None:
        from tasks.backends.registry import backend_name
        from tasks.runtime.prefect_support import run_logger

        run_logger().info("caption (%s): %d images, %d sent to the model, %d from cache, %d quarantined",
                          backend_name(self.cfg, ALT_TEXT), outcome.rows_in, outcome.model_calls,
                          outcome.cache_hits, outcome.rows_quarantined)


class CaptionWork:
    """Builds the captioner once; captions batches of images. Unreadable images and failed or
    empty captions come back as error rows."""

    def __init__(self, args: dict, device: str = "cpu"):
        from tasks.backends.registry import build_captioner

        self.cfg = CaptionConfig.model_validate(args["cfg"])
        self.root = Path(args["corpus_root"])
        self.prompt = args["prompt"]
        self.backend = build_captioner(self.cfg, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from tasks.backends.registry import caption_outcomes
        from tasks.ingest.checks import load_rgb

        keys = batch[KEY].to_pylist()
        errors: dict[int, str] = {}
        images, where = [], []
        for i, uri in enumerate(batch["image_uri"].to_pylist()):
            try:
                images.append(load_rgb(self.root, uri))
                where.append(i)
            except (OSError, ValueError) as e:
                errors[i] = f"image could not be read: {type(e).__name__}: {e}"
        texts: dict[int, str] = {}
        for i, o in zip(where, caption_outcomes(self.backend, images, self.prompt, self.cfg.max_new_tokens)):
            if not o.ok:
                errors[i] = f"captioning failed: {o.error}"
            elif not (o.value or "").strip():
                errors[i] = "captioning failed: the model returned an empty caption"
            else:
                texts[i] = o.value.strip()
        n = len(keys)
        return pa.table({KEY: keys, "text": [texts.get(i) for i in range(n)],
                         "captioner": [self.backend.name] * n, "error": [errors.get(i) for i in range(n)]})
