"""Embed: vectors for document texts, captions and images, one dataset per embedding space.

Units are items keyed by the sha256 of what they embed, so identical content shares one model
call and only content never embedded in this space reaches a model. `text_vectors` is the same
work and cache as a service: queries are embedded through it once per space, and round-trip,
the judge's pools and mining reuse those vectors.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import EmbedConfig, ImageEncoder, TextEncoder
from schemas.tables import embeddings_schema
from tasks.runtime.ids import cache_key, text_sha256
from tasks.runtime.stage import KEY, UNIT, Assembled, Read, Resources, Stage, Units, Work, optional
from tasks.runtime.tables import vectors

TEXT_DATASET = "embeddings/text"
SERVICE_LOCAL_BELOW = 20_000  # text_vectors embeds fewer texts than this in-process, no actor pool
IMAGE_DATASET = "embeddings/image"


def _const(value: str, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


def _with_sha(items: pa.Table) -> pa.Table:
    return items.append_column("content_sha256", pa.array([text_sha256(t) for t in items["text"].to_pylist()],
                                                          pa.string()))


def text_items(documents: pa.Table, captions: pa.Table | None = None) -> pa.Table:
    """Document texts and caption texts, each with the sha256 of the text it embeds."""
    docs = documents.filter(pc.is_valid(documents["text"]))
    parts = [pa.table({"item_id": docs["doc_id"], "item_kind": pa.array(["document"] * docs.num_rows, pa.string()),
                       "doc_id": docs["doc_id"], "text": docs["text"]})]
    if captions is not None and captions.num_rows:
        parts.append(pa.table({"item_id": captions["caption_id"],
                               "item_kind": pa.array(["caption"] * captions.num_rows, pa.string()),
                               "doc_id": captions["doc_id"], "text": captions["text"]}))
    return _with_sha(pa.concat_tables(parts))


def image_items(documents: pa.Table) -> pa.Table:
    docs = documents.filter(pc.is_valid(documents["image_uri"]))
    return pa.table({"item_id": docs["doc_id"], "item_kind": pa.array(["image"] * docs.num_rows, pa.string()),
                     "doc_id": docs["doc_id"], "image_uri": docs["image_uri"],
                     "content_sha256": docs["image_sha256"]})


CHUNK_ROWS = 50_000  # items per chunk: the flow process never holds more of a space than this


class _Embed(Stage):
    """What the text and image spaces share: items in, one vector per item out.

    A streaming delta stage: items are read from the input shards chunk by chunk, an item whose
    vector the current version already holds (same kind, id, content and space) is carried over
    untouched, new items go to the encoder, whose workers write the output rows as shards, and
    items that are gone become deletion files of the next version.
    """

    kind: str
    dataset: str
    incremental = True

    @property
    def embed(self) -> EmbedConfig:
        return self.config.embed

    def space(self) -> str:
        raise NotImplementedError

    def item_batches(self, inputs):
        """The items to embed, in batches (item_id, item_kind, doc_id, content_sha256, ...; document items
        may leave content_sha256 out: units() derives it, hashing only texts the current version lacks)."""
        raise NotImplementedError

    def output_mode(self, name: str):
        return "delta", None

    def units(self, inputs):
        from tasks.runtime.versions import scratch_db

        fp = self.work_fingerprint()
        self._db = db = scratch_db()
        db.execute("CREATE TABLE seen (item_kind VARCHAR, item_id VARCHAR, content_sha256 VARCHAR)")
        prev = inputs.previous_ref(self.dataset)
        self._prev = prev is not None and inputs.run is not None
        if self._prev:
            ds = inputs.previous_dataset(self.dataset)
            reader = ds.scanner(columns=["item_kind", "item_id", "content_sha256", "space"], with_row_address=True,
                                batch_size=65_536).to_reader()
            db.register("prev_in", reader)
            db.execute("CREATE TABLE prev AS SELECT * FROM prev_in")
            db.unregister("prev_in")
            # this space's document vectors, by doc id: what a chunk of documents is looked up in
            db.execute("CREATE TABLE prev_docs AS SELECT item_id, any_value(content_sha256) AS sha FROM prev "
                       "WHERE item_kind = 'document' AND space = ? GROUP BY item_id", [self.space()])
        for batch in self.item_batches(inputs):
            items = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
            if items.num_rows == 0:
                continue
            held = None
            if "content_sha256" not in items.column_names:
                items, held = self._with_document_sha(db, items)
            db.register("chunk", items.select(["item_kind", "item_id", "content_sha256"]))
            db.execute("INSERT INTO seen SELECT * FROM chunk")
            kept = 0
            if held is not None:  # documents: a vector of this space for the doc id is one for its text
                kept = int(held.sum())
                if kept:
                    items = items.filter(pa.array(~held))
            elif self._prev:
                done = db.sql("SELECT item_kind, item_id, content_sha256 FROM chunk SEMI JOIN "
                              "(SELECT * FROM prev WHERE space = $space) USING (item_kind, item_id, content_sha256)",
                              params={"space": self.space()}).to_arrow_table()
                kept = done.num_rows
                if kept:
                    mask = pc.is_in(pc.binary_join_element_wise(items["item_kind"], items["item_id"],
                                                                items["content_sha256"], "\x00"),
                                    value_set=pc.binary_join_element_wise(done["item_kind"], done["item_id"],
                                                                          done["content_sha256"], "\x00"))
                    items = items.filter(pc.invert(mask))
            db.unregister("chunk")
            keys = pa.array([cache_key(c, fp) for c in items["content_sha256"].to_pylist()], pa.string())
            yield Units(items.append_column(UNIT, items["item_id"]).append_column(KEY, keys), kept=kept)

    def _with_document_sha(self, db, items: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """content_sha256 of document items, and which of them the previous version already holds in
        this space. A doc_id is the address of its content, so a held document keeps its sha from
        there and only new texts are hashed: a refresh of a large corpus hashes its delta, and
        looks each chunk up once in a table of this space's documents only."""
        sha = pa.nulls(items.num_rows, pa.string())
        if self._prev:
            db.register("chunk_ids", items.select(["item_id"]))
            known = db.sql("SELECT item_id, sha FROM prev_docs SEMI JOIN chunk_ids USING (item_id)").to_arrow_table()
            db.unregister("chunk_ids")
            sha = known["sha"].take(pc.index_in(items["item_id"], value_set=known["item_id"])).combine_chunks()
        missing = pc.is_null(sha)
        held = ~missing.to_numpy(zero_copy_only=False)
        todo = items["text"].filter(missing).to_pylist()
        if todo:
            sha = pc.replace_with_mask(sha, missing, pa.array([text_sha256(t) for t in todo], pa.string()))
        return items.append_column("content_sha256", sha), held

    def finish(self, inputs) -> dict:
        db = getattr(self, "_db", None)
        if db is None:
            return {}
        try:
            if not self._prev:
                return {"notes": {"space": self.space()}}
            gone = db.execute("SELECT _rowaddr FROM (SELECT * FROM prev WHERE space = ?) "
                              "ANTI JOIN seen USING (item_kind, item_id, content_sha256) "
                              "UNION ALL SELECT _rowaddr FROM prev WHERE space <> ?",
                              [self.space(), self.space()]).fetchnumpy()["_rowaddr"].tolist()
            return {self.dataset: {"deleted": gone}, "notes": {"space": self.space(), "deleted": len(gone)}}
        finally:
            db.close()
            self._db = None

    def batch_outputs(self, units: pa.Table, results: pa.Table) -> dict[str, pa.Table]:
        """The embeddings rows of a batch (in the worker that embedded it)."""
        if units.num_rows == 0:
            return {}
        idx = pc.index_in(units[KEY], value_set=results[KEY])
        vecs = results["vector"].take(idx)
        dim = len(vecs[0]) if not pa.types.is_fixed_size_list(vecs.type) else vecs.type.list_size
        table = pa.table({
            "item_id": units["item_id"], "item_kind": units["item_kind"], "doc_id": units["doc_id"],
            "content_sha256": units["content_sha256"],
            "space": pa.array([self.space()] * units.num_rows, pa.string()),
            "vector": vecs.cast(pa.list_(pa.float32(), dim)),
        }, schema=embeddings_schema(dim))
        return {self.dataset: table}

    def payload(self, unit: dict) -> dict:
        return {"item_id": unit["item_id"], "doc_id": unit["doc_id"]}

    def assemble(self, inputs, units: pa.Table, results: pa.Table | None) -> Assembled:
        """Per chunk: every unit the work did not fail on has its row in a staged shard."""
        return Assembled({}, units[UNIT].to_pylist())

    def report(self, outcome) -> None:
        from tasks.runtime.prefect_support import run_logger

        run_logger().info("%s: %d items, %d sent to the model, %d reused", self.name, outcome.rows_in,
                          outcome.model_calls, outcome.cache_hits)


class EmbedText(_Embed):
    name = "embed_text"
    section = "embed.text"
    reads = (Read("documents"), optional("captions"))
    writes = (TEXT_DATASET,)
    dataset = TEXT_DATASET
    description = "MiniLM (or the configured encoder) vectors of document texts and captions"

    @property
    def cfg(self) -> TextEncoder:
        return self.config.embed.text

    def space(self) -> str:
        from tasks.backends.embedders import text_space

        return text_space(self.cfg)

    def item_batches(self, inputs):
        for batch in inputs.batches("documents", ["doc_id", "text"], filter="text IS NOT NULL",
                                    batch_size=CHUNK_ROWS):
            docs = pa.Table.from_batches([batch])
            docs = docs.filter(pc.is_valid(docs["text"]))
            yield pa.table({"item_id": docs["doc_id"], "item_kind": _const("document", docs.num_rows),
                            "doc_id": docs["doc_id"], "text": docs["text"]})  # units() adds the content sha
        if "captions" in inputs:
            for batch in inputs.batches("captions", ["caption_id", "doc_id", "text"], batch_size=CHUNK_ROWS):
                caps = pa.Table.from_batches([batch])
                yield _with_sha(pa.table({"item_id": caps["caption_id"], "item_kind": _const("caption", caps.num_rows),
                                          "doc_id": caps["doc_id"], "text": caps["text"]}))

    def work(self) -> Work:
        return text_work(self.config)


class EmbedImage(_Embed):
    name = "embed_image"
    section = "embed.image"
    reads = (Read("documents"),)
    writes = (IMAGE_DATASET,)
    dataset = IMAGE_DATASET
    description = "CLIP-style image vectors (when embed.image is configured)"

    @property
    def cfg(self) -> ImageEncoder | None:
        return self.config.embed.image

    def enabled(self) -> bool:
        return self.cfg is not None

    def space(self) -> str:
        from tasks.backends.embedders import image_space

        return image_space(self.cfg)

    def item_batches(self, inputs):
        for batch in inputs.batches("documents", ["doc_id", "image_uri", "image_sha256"],
                                    filter="image_uri IS NOT NULL", batch_size=CHUNK_ROWS):
            docs = pa.Table.from_batches([batch])
            yield image_items(docs.filter(pc.is_valid(docs["image_uri"])))

    def work(self) -> Work:
        e = self.embed
        return Work(ImageEncoderWork, {"encoder": self.cfg.model_dump(mode="json"),
                                       "corpus_root": str(self.config.corpus_root)}, ["image_uri"],
                    pa.schema([("vector", pa.list_(pa.float32()))]),
                    Resources.of(e, batch_size=self.cfg.batch_size))



def text_work(config) -> Work:
    e = config.embed
    return Work(TextEncoderWork, {"encoder": e.text.model_dump(mode="json")}, ["text"],
                pa.schema([("vector", pa.list_(pa.float32()))]), Resources.of(e, batch_size=e.text.batch_size))


class TextEncoderWork:
    """Loads the text encoder once; embeds batches of texts."""

    def __init__(self, args: dict, device: str = "cpu"):
        from tasks.backends.embedders import SentenceTransformerEmbedder

        self.model = SentenceTransformerEmbedder(TextEncoder.model_validate(args["encoder"]), device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        vecs = self.model.embed(batch["text"].to_pylist())
        return pa.table({KEY: batch[KEY], "vector": pa.array(list(vecs), pa.list_(pa.float32()))})


class ImageEncoderWork:
    """The image encoder; an unreadable image is an error row for that image."""

    def __init__(self, args: dict, device: str = "cpu"):
        from tasks.backends.embedders import ClipImageEmbedder

        self.root = Path(args["corpus_root"])
        self.model = ClipImageEmbedder(ImageEncoder.model_validate(args["encoder"]), device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from tasks.ingest.checks import Rejected, load_rgb

        images, ok, errors = [], [], []
        for uri in batch["image_uri"].to_pylist():
            try:
                images.append(load_rgb(self.root, uri))  # contained in the corpus, EXIF-oriented
                ok.append(True)
                errors.append(None)
            except Rejected as e:
                ok.append(False)
                errors.append(f"no vector: {e}")
            except (OSError, ValueError) as e:
                ok.append(False)
                errors.append(f"no vector: the encoder could not read this item ({type(e).__name__})")
        vecs = self.model.embed_images(images)
        out, it = [], iter(vecs)
        for good in ok:
            out.append(next(it) if good else None)
        return pa.table({KEY: batch[KEY], "vector": pa.array(out, pa.list_(pa.float32())), "error": errors})


# ---- the service: text vectors through the embed stage's cache ------------------------------------
def text_vectors(inputs, texts: list[str], encoder: TextEncoder | None = None) -> np.ndarray:
    """Vectors of `texts` in the configured text space (or `encoder`'s), through the embed_text
    work cache: a text embedded once in a space is never embedded again. Model calls and cache
    hits are added to the calling stage's counts."""
    from tasks.runtime.cache import WorkCache
    from tasks.runtime.runner import run_work

    config = inputs.config
    if encoder is not None and encoder != config.embed.text:
        config = config.model_copy(update={"embed": config.embed.model_copy(update={"text": encoder})})
    stage = EmbedText(config)
    if not texts:
        return np.zeros((0, 0), np.float32)
    fp = stage.work_fingerprint()
    keys = [cache_key(text_sha256(t), fp) for t in texts]
    units = pa.table({UNIT: pa.array([str(i) for i in range(len(texts))], pa.string()),
                      KEY: pa.array(keys, pa.string()), "text": pa.array(texts, pa.string())})
    cache = WorkCache(inputs.cache_root, stage.name, fp) if inputs.cache_root is not None else None
    work = stage.work()
    # a stage's own texts (queries) are few next to a corpus: in-process unless many
    work.resources = replace(work.resources, local_below=max(work.resources.local_below, SERVICE_LOCAL_BELOW))
    if cache is None:
        work.cached = False
    wr = run_work(stage, work, units, cache)
    if wr.failed:
        raise RuntimeError(f"embedding failed for {len(wr.failed)} texts, e.g. {next(iter(wr.failed.values()))}")
    inputs.counters.model_calls += wr.model_calls
    inputs.counters.cache_hits += wr.cache_hits
    at = {k: i for i, k in enumerate(wr.results[KEY].to_pylist())}
    return vectors(wr.results)[[at[k] for k in keys]]
