"""CLI commands for indexes, hard negatives and exports: `search-index`, `mine`, `export`."""

import json
from typing import Annotated, Optional

from flows.cli_choices import Retriever, ExportKind


def cmd_search_index(args) -> int:
    import pyarrow as pa

    from flows.cli import print_table
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
    print_table(hits, args.format, args.width)
    return 0


def cmd_export(args) -> int:
    from flows.cli import catalog_path
    from flows.export import export_flow

    overrides = {k: v for k, v in {"num_negatives": args.num_negatives, "scores": args.scores or None,
                                   "prompt": args.prompt, "images": args.images}.items() if v is not None}
    catalog = args.catalog or (None if args.config else catalog_path(args))
    results = export_flow(formats=args.kinds, out=args.out, catalog=catalog, config_path=args.config,
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


def register(app) -> None:
    import typer

    from flows.cli import CatalogOpt, ConfigOpt, ConfigReq, FormatOpt, OutputFormat, QuietOpt, WidthOpt, ns, \
        quiet_progress

    @app.command("search-index")
    def search_index(text: Annotated[str, typer.Argument(help="the query text")],
                     k: Annotated[int, typer.Option("--k", min=1, help="hits to print")] = 10,
                     retriever: Annotated[Retriever, typer.Option("--retriever", help="dense (vector index), bm25, "
                                                                  "or both fused by reciprocal rank")] = Retriever.dense,
                     index: Annotated[str, typer.Option("--index", help="vector index name "
                                                        "(`corpusforge sql \"SELECT name FROM indexes\"`)")] = "text",
                     catalog: CatalogOpt = None, config: ConfigOpt = None,
                     format: FormatOpt = OutputFormat.table, width: WidthOpt = 70) -> int:
        """Search a vector (or BM25) index of the catalog for one query."""
        return cmd_search_index(ns(text=text, k=k, retriever=retriever.value, index=index, catalog=catalog,
                                   config=config, format=format, width=width))

    @app.command("mine")
    def mine(config: ConfigReq, quiet: QuietOpt = False) -> int:
        """Index the embeddings and mine hard negatives (the `mine` flow)."""
        with quiet_progress(quiet):
            return cmd_mine(ns(config=config))

    @app.command("export")
    def export(kind: Annotated[list[ExportKind], typer.Option("--kind", help="export kind; repeat for several")],
               out: Annotated[Optional[str], typer.Option("--out", help="output folder (default: export.out of "
                                                          "the config, else ./exports)")] = None,
               num_negatives: Annotated[Optional[int], typer.Option("--num-negatives", min=1, help="sentence-"
                                                                    "transformers: negative_1..n columns")] = None,
               scores: Annotated[bool, typer.Option("--scores", help="sentence-transformers: add the scores "
                                                    "column")] = False,
               prompt: Annotated[Optional[str], typer.Option("--prompt", help="FlagEmbedding query instruction "
                                                             "(omitted from the rows when empty)")] = None,
               images: Annotated[Optional[str], typer.Option("--images", help="M-BEIR: copy or link the "
                                                             "images")] = None,
               negatives: Annotated[Optional[str], typer.Option("--negatives", help="negatives dataset to export "
                                                                "(default: negatives)")] = None,
               catalog: CatalogOpt = None, config: ConfigOpt = None, quiet: QuietOpt = False) -> int:
        """Write training corpora with a dataset card (the `export` flow)."""
        if images not in (None, "copy", "link"):
            raise typer.BadParameter("choose copy or link", param_hint="--images")
        with quiet_progress(quiet):
            return cmd_export(ns(kinds=[k.value for k in kind], out=out, num_negatives=num_negatives,
                                 scores=scores, prompt=prompt, images=images, negatives=negatives,
                                 catalog=catalog, config=config))
