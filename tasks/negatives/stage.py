"""The negatives stage: hard negatives for the usable queries (or imported ones) against the text
index, re-mining on refresh only the queries that new or removed documents can reach.

Pipeline queries write `negatives` and `candidates/mining`; imported queries
(`negatives.queries_file`) write `negatives/<name>` and `candidates/mining-<name>`, so mining
them never replaces the build's negatives. Each query's state (what its negatives depend on)
is stored with the negatives version, for the next refresh.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.index.store import input_index, input_lexical
from tasks.negatives.inputs import load_inputs, resolve_doc_ids
from tasks.negatives.mine import (doc_modalities, expected_modalities, judge_lookup, mine, positives_by_query,
                                  query_state_hash)
from tasks.negatives.plan import plan_mining
from tasks.negatives.refresh import Prior, affected_queries
from tasks.runtime.publish import content_hash
from tasks.runtime.stage import KEY, UNIT, Assembled, Output, Read, Stage, Units, optional

STATE_FILE = "state.parquet"


class Negatives(Stage):
    name = "negatives"
    section = "negatives"
    runs_as_task = True
    reads = (Read("documents"), optional("source_ids"), optional("queries"), optional("query_answerability"),
             Read("indexes/{index}"), optional("indexes/bm25"), optional("judgments/*"))
    incremental = True
    description = "hard negatives with composable policies (margins, judge filter, modality, sampling)"

    def task_size(self, inputs, units: pa.Table) -> int:
        ref = inputs.ref(f"indexes/{self.cfg.index}")
        return ref.row_count if ref is not None else 0

    def label(self) -> str | None:
        """The imported query set's name, or None for the pipeline's queries."""
        cfg = self.cfg
        if not cfg.queries_file:
            return None
        return cfg.name or Path(cfg.queries_file).stem

    def outputs(self) -> tuple[str, ...]:
        label = self.label()
        return ("negatives", "candidates/mining") if label is None else (f"negatives/{label}",
                                                                          f"candidates/mining-{label}")

    def units(self, inputs) -> Units:
        mi = load_inputs(inputs, self.cfg)
        self._mining_inputs = mi
        schema = pa.schema([(UNIT, pa.string()), (KEY, pa.string())])
        if mi is None:
            return Units(schema.empty_table())
        q = mi.queries["query_id"]
        return Units(pa.table({UNIT: q, KEY: q}, schema=schema), mi.rejected, mi.duplicates)

    def assemble(self, inputs, units: pa.Table, results) -> Assembled:
        from tasks.embed import text_vectors

        cfg, mi = self.cfg, self._mining_inputs
        neg_name, cand_name = self.outputs()
        if mi is None or units.num_rows == 0:
            return Assembled({}, [], notes={"skipped": "no queries (no `queries` dataset and no negatives.queries_file)"})
        index_ref = inputs.ref(f"indexes/{cfg.index}")
        index = input_index(inputs, f"indexes/{cfg.index}")
        self._check_space(index)
        lexical = input_lexical(inputs) if cfg.source != "dense" else None
        # ids and modalities only: the texts of a large corpus never come into the mining task
        documents = inputs.columns("documents", ["doc_id", "modality", "source_id"])
        judgments = inputs.concat("judgments/") if cfg.judge_filter.enabled else None
        if judgments is not None:
            judgments = judgments.set_column(judgments.schema.get_field_index("doc_id"), "doc_id", pa.array(
                [r or d for r, d in zip(resolve_doc_ids(judgments["doc_id"].to_pylist(), documents),
                                        judgments["doc_id"].to_pylist())], pa.string()))
        queries = mi.queries
        qids = queries["query_id"].to_pylist()
        vecs = text_vectors(inputs, queries["text"].to_pylist()) if qids else np.zeros((0, index.dim), np.float32)
        pos_map = positives_by_query(mi.positives)
        max_pos = max((len(v) for v in pos_map.values()), default=1)
        plan = plan_mining(cfg, max_pos)
        fp = self.fingerprint()
        judging = {}
        if cfg.judge_filter.enabled:  # judge what the filter needs first, through the judge stage
            from tasks.negatives.judging import judge_what_mining_needs

            judgments, judging = judge_what_mining_needs(inputs, self.config, queries, vecs, mi.positives, index,
                                                         plan, judgments, lexical, documents)

        # what each query's negatives depend on, to compare with the previous run
        expected = (expected_modalities(queries, pos_map, doc_modalities(documents, cfg))
                    if cfg.modality.enabled else {})
        judged = judge_lookup(judgments, cfg.judge_filter.judges) if judgments is not None else {}
        judged_by_query: dict[str, list] = {}
        for (q, d), v in judged.items():
            judged_by_query.setdefault(q, []).append((d, *v))
        texts = dict(zip(qids, queries["text"].to_pylist()))
        state_now = {q: query_state_hash(q, texts[q], pos_map.get(q, []), judged_by_query.get(q, []), expected.get(q))
                     for q in qids if pos_map.get(q)}

        lexical_version = inputs.ref("indexes/bm25").version if inputs.ref("indexes/bm25") else None
        previous = self._previous(inputs, fp, plan, lexical_version)
        mode, report_refresh, todo, prior = "full", {}, qids, None
        if previous is not None:
            prev_neg, prev_cand, prev_state, prev_items = previous
            affected, merge, added_rows, report_refresh = affected_queries(
                prev_state, prev_cand, state_now, index, prev_items, dict(zip(qids, vecs)), pos_map)
            todo = [q for q in qids if q in affected or q not in state_now]
            mode = "incremental"
            if cfg.source == "dense" and merge:
                prior = Prior.of(index, prev_cand, merge, added_rows)
        todo_set = set(todo)
        rows = [i for i, q in enumerate(qids) if q in todo_set]
        sub_q = queries.take(pa.array(rows, pa.int64())) if rows else queries.slice(0, 0)
        res = mine(sub_q, vecs[rows] if rows else np.zeros((0, index.dim), np.float32), mi.positives, index, cfg,
                   lexical=lexical, judgments=judgments, documents=documents, max_positives=max_pos, prior=prior)
        negatives, candidates, state = res.negatives, res.candidates, res.state
        if previous is not None:
            keep = pa.array(sorted(set(state_now) - todo_set), pa.string())
            negatives = pa.concat_tables([prev_neg.filter(pc.is_in(prev_neg["query_id"], value_set=keep)), negatives])
            candidates = pa.concat_tables([prev_cand.filter(pc.is_in(prev_cand["query_id"], value_set=keep)),
                                           candidates])
            state = pa.concat_tables([prev_state.filter(pc.is_in(prev_state["query_id"], value_set=keep)), state])
        cand_hash = content_hash("candidates", candidates)
        manifest = {"fingerprint": fp, "plan": plan.__dict__, "index": cfg.index, "index_version": index_ref.version,
                    "index_path": index_ref.path, "index_table_version": index_ref.table_version,
                    "lexical_version": lexical_version, "candidates_hash": cand_hash}
        state_path = os.path.join(tempfile.mkdtemp(prefix="corpusforge-negatives-"), STATE_FILE)
        pq.write_table(state, state_path)
        identity = {"state": _state_hash(state), "candidates": cand_hash}
        report = res.report | {"mode": mode, "queries_total": len(qids), "queries_remined": len(todo),
                               "queries_reused": len(qids) - len(todo), "refresh": report_refresh,
                               "index": index_ref.ref, "rows": negatives.num_rows, "negatives_dataset": neg_name,
                               "judge_filter": judging}
        quarantined = [{"key": r["key"], "reason": r["reason"], "payload": r["payload"]} for r in res.quarantine.rows]
        return Assembled({neg_name: Output(negatives, {STATE_FILE: state_path}, manifest, identity),
                          cand_name: candidates}, state["query_id"].to_pylist(), quarantined, notes=report)

    def _check_space(self, index) -> None:
        from tasks.backends.embedders import text_space

        space = index.manifest.get("space")
        if text_space(self.config.embed.text) != space:
            raise ValueError(f"the index is in space {space} but embed.text encodes into "
                             f"{text_space(self.config.embed.text)}; mine with negatives.index set to an index "
                             "of the configured text encoder")

    def _previous(self, inputs, fp: str, plan, lexical_version):
        """The previous negatives, candidates, per-query state and index id map, when reusable."""
        neg_name, cand_name = self.outputs()
        prev_ref, cand_ref = inputs.previous_ref(neg_name), inputs.previous_ref(cand_name)
        if prev_ref is None or cand_ref is None:
            return None
        manifest = inputs.meta(prev_ref)
        state_path = inputs.attachment(prev_ref, STATE_FILE)
        if not manifest or state_path is None:
            return None
        cfg = self.cfg
        if (manifest.get("fingerprint") != fp or manifest.get("plan") != plan.__dict__
                or manifest.get("index") != cfg.index):
            return None
        prev_candidates = inputs.previous(cand_name)
        if manifest.get("candidates_hash") != content_hash("candidates", prev_candidates):
            return None  # the candidates were replaced since: their state no longer describes them
        if cfg.source != "dense" and manifest.get("lexical_version") != lexical_version:
            return None  # BM25 statistics shift with every document: lexical lists are all re-retrieved
        prev_items = _index_items(inputs.root, manifest)
        if prev_items is None:
            return None
        return inputs.previous(neg_name), prev_candidates, pq.read_table(state_path), prev_items

    def report(self, outcome) -> None:
        from prefect.artifacts import create_markdown_artifact
        from prefect.context import TaskRunContext

        from tasks.runtime.prefect_support import artifact_key, run_logger

        r = outcome.notes
        if "skipped" in r:
            run_logger().info("negatives: skipped (%s)", r["skipped"])
            return
        run_logger().info("negatives: %s mining of %d/%d queries, %d rows; %d queries short of %d negatives",
                          r["mode"], r["queries_remined"], r["queries_total"], r["rows"], r["queries_short"],
                          r["num_negatives"])
        if TaskRunContext.get() is not None:
            create_markdown_artifact(key=artifact_key(self.config.name, "negatives-report"), markdown=report_markdown(r),
                                     description="Hard negative mining: what each policy removed, shortfalls")


def _index_items(root, manifest: dict) -> pa.Table | None:
    """The id map of the index version the previous negatives were mined against (None: gone)."""
    from tasks.runtime import versions

    if manifest.get("index_table_version") is None:
        return None
    try:
        ds = versions.open_dataset(root.absolute(manifest["index_path"]), manifest["index_table_version"],
                                   root.storage_options)
        return ds.to_table()
    except (ValueError, OSError, RuntimeError):
        return None


def _state_hash(state: pa.Table) -> str:
    from tasks.runtime.ids import record_id

    s = state.sort_by("query_id")
    return record_id(s["query_id"].to_pylist(), s["input_hash"].to_pylist(),
                     [float(x) for x in s["dense_cutoff"].to_pylist()])


def report_markdown(r: dict) -> str:
    lines = [f"### Negatives: {r.get('negatives_dataset')} ({r['rows']} rows), {r['mode']} run", "",
             f"- queries: {r['queries_total']} total, {r['queries_remined']} mined now, {r['queries_reused']} reused, "
             f"{r['queries_quarantined']} quarantined",
             f"- window {r['range_min']}-{r['range_max']}, depth {r['depth']}, {r['num_negatives']} negatives asked",
             f"- queries short of that: {r['queries_short']} ({r['queries_without_negatives']} with none)"
             + (f", e.g. {', '.join(r['short_examples'][:5])}" if r["short_examples"] else ""),
             f"- modality classes: C1 {r['modality_c1']}, C2 {r['modality_c2']}", "",
             "| policy | candidates removed |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r["removed"].items()] or ["| (none) | 0 |"]
    lines += [f"| (considered) | {r['candidates_considered']} |"]
    return "\n".join(lines)

