"""CLI commands for indexes, hard negatives and exports: `search-index`, `mine`, `export`."""
from __future__ import annotations

import json

from flows.cli import add_catalog_args, catalog_path, print_table


def cmd_search_index(args) -> int:
    import pyarrow as pa

    from flows.common import config_for
    from tasks.index.search import search
    from tasks.index.store import IndexStore
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.publish import read
    from tasks.runtime.storage import DataRoot

    cfg = config_for(args.catalog, args.config)
    root = DataRoot(cfg.data_root_uri)
    catalog = Catalog(cfg.catalog_path, root)
    embedder = None
    if args.config and args.index == "text":
        from tasks.backends.embedders import local_text_embedder

        embedder = local_text_embedder(cfg.embed.text.model_dump_json())
    try:
        hits = search(IndexStore(catalog, root), args.text, k=args.k, retriever=args.retriever, index=args.index,
                      embedder=embedder)
    except (LookupError, ValueError) as e:
        raise SystemExit(str(e)) from None
    if catalog.current("documents") is not None and hits.num_rows:
        docs = read(catalog, root, "documents")
        info = {d: (m, t or a or u or "") for d, m, t, a, u in zip(*(docs[c].to_pylist() for c in
                ("doc_id", "modality", "text", "alt_text", "image_uri")))}
        hits = hits.append_column("modality", pa.array([info.get(d, ("", ""))[0] for d in hits["doc_id"].to_pylist()]))
        hits = hits.append_column("snippet", pa.array([info.get(d, ("", ""))[1] for d in hits["doc_id"].to_pylist()]))
    print_table(hits, args.format, max_width=args.max_width)
    return 0


def cmd_export(args) -> int:
    from flows.export import export_flow

    overrides = {k: v for k, v in {"num_negatives": args.num_negatives, "scores": args.scores or None,
                                   "prompt": args.prompt, "images": args.images}.items() if v is not None}
    catalog = args.catalog or (None if args.config else catalog_path(args))
    results = export_flow(formats=args.format, out=args.out, catalog=catalog, config_path=args.config,
                          export_overrides=overrides, negatives=args.negatives)
    for fmt, r in results.items():
        counts = {k: v for k, v in r["counts"].items() if not isinstance(v, (list, dict))}
        counts["files"] = len(r["counts"].get("files", []))
        print(f"{fmt:<22} {r['path']}  {json.dumps(counts)}")
    return 0


def cmd_mine(args) -> int:
    from flows.export import mine_flow

    result = mine_flow(config_path=args.config)
    neg = result["negatives"]
    if "skipped" in neg:
        print(f"negatives: skipped ({neg['skipped']})")
        return 0
    print(f"run {result['run_id']}: {neg.get('negatives_dataset')} with {neg.get('rows')} rows; mined "
          f"{neg.get('queries_remined')}/{neg.get('queries_total')} queries ({neg.get('mode')}); "
          f"{neg.get('queries_short')} short of {neg.get('num_negatives')} negatives; "
          f"{neg.get('queries_quarantined')} quarantined")
    for name, s in result["index"].items():
        print(f"index {name}: {s['action']} ({s.get('type', 'bm25')}, {s['count']})")
    return 0


def register(sub) -> None:
    fmt = dict(choices=["table", "csv", "json"], default="table")

    s = sub.add_parser("search-index", help="query the vector (or BM25) index of a catalog")
    add_catalog_args(s)
    s.add_argument("text")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--retriever", choices=["dense", "bm25", "both"], default="dense")
    s.add_argument("--index", default="text", help="vector index name (embeddings/<name>)")
    s.add_argument("--format", **fmt)
    s.add_argument("--max-width", type=int, default=70)
    s.set_defaults(func=cmd_search_index)

    m = sub.add_parser("mine", help="index the embeddings and mine hard negatives (the `mine` flow)")
    m.add_argument("--config", required=True, help="YAML run config (its negatives section)")
    m.set_defaults(func=cmd_mine)

    e = sub.add_parser("export", help="write training corpora with a dataset card (the `export` flow)")
    add_catalog_args(e)
    e.add_argument("--format", required=True, action="append",
                   choices=["flagembedding", "sentence-transformers", "mbeir", "trec", "parquet"],
                   help="repeat for several formats")
    e.add_argument("--out", help="output folder (default: export.out of the config, else ./exports)")
    e.add_argument("--num-negatives", type=int, help="sentence-transformers: negative_1..n columns")
    e.add_argument("--scores", action="store_true", help="sentence-transformers: add the scores column")
    e.add_argument("--prompt", help="FlagEmbedding query instruction")
    e.add_argument("--images", choices=["copy", "link"], help="M-BEIR: copy or link the images")
    e.add_argument("--negatives", help="negatives dataset to export (default: negatives; imported query sets "
                   "mine into negatives/<name>)")
    e.set_defaults(func=cmd_export)

