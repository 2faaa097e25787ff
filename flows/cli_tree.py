"""CLI commands for semantic trees.

    corpusforge search-tree "QUERY" [--tree NAME] [--k N] [--scorer embedding|llm] [--format table|csv|json]
    corpusforge search-tree-queries [--queries FILE] [--tree NAME] [--k N] [--qid Q ...] [--trec-out FILE]
    corpusforge tree show [--tree NAME] [--depth D] [--width W]
    corpusforge tree list

All take --catalog PATH or --config FILE (the config supplies the tree and search settings and
the LLM backend for `--scorer llm`).
"""

import json
from pathlib import Path
from typing import Annotated, Optional

from flows.cli_choices import Scorer
from flows.cli_output import error_text


def _config(args):
    from schemas.config import load_config

    return load_config(args.config) if getattr(args, "config", None) else None


def _store(args):
    from flows.common import config_for
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.storage import DataRoot

    cfg = config_for(getattr(args, "catalog", None), getattr(args, "config", None))
    if not Path(cfg.catalog_path).exists():
        raise SystemExit(f"no catalog at {cfg.catalog_path}: build a corpus first")
    root = DataRoot(cfg.data_root_uri)
    return _config(args), Catalog(cfg.catalog_path, root), root


def _tree_name(args, config) -> str:
    return args.tree or (config.tree.name if config else "default")


def _load(args):
    from tasks.tree.stage import load_tree

    config, cat, root = _store(args)
    try:
        return config, load_tree(cat, root, _tree_name(args, config))
    except KeyError as e:
        raise SystemExit(error_text(e)) from None


def cmd_search(args) -> int:
    from schemas.config import TreeConfig
    from tasks.tree.search_stage import make_scorer
    from tasks.tree.search import SearchParams, search

    if not args.query.strip():
        raise SystemExit("the query text is empty: give the words to search for, e.g. \"red bicycle\"")
    config, loaded = _load(args)
    tcfg = config.tree if config else TreeConfig()
    s = tcfg.search
    params = SearchParams(args.beam or s.beam, args.iterations or s.iterations, s.calibration_leaves,
                          s.path_factor, tcfg.seed)
    try:
        scorer = make_scorer(tcfg, loaded.tree.space, [config.embed.text] if config else [], args.scorer)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    result = search(loaded.tree, args.query, scorer, params, k=args.k)
    if args.format == "csv":
        from flows.cli import print_table

        print_table([{"rank": h.rank, "doc_id": h.doc_id, "score": h.score, "calibrated": h.calibrated,
                      "path": " > ".join(t for _, t in h.path)} for h in result.hits], "csv")
        return 0
    if args.format == "json":
        print(json.dumps({"query": result.query, "tree": loaded.nodes.ref, "scorer": scorer.name,
                          "scorer_calls": result.scorer_calls, "failed_slates": result.failed_slates,
                          "hits": [{"rank": h.rank, "doc_id": h.doc_id, "score": h.score, "calibrated": h.calibrated,
                                    "path": [{"node_id": n, "summary": t} for n, t in h.path],
                                    "text": loaded.tree.text[loaded.tree.leaf_of(h.doc_id)]}
                                   for h in result.hits]}, indent=2))
        return 0
    print(f"Query: {result.query}")
    print(f"Tree {loaded.nodes.ref} ({loaded.tree.n_docs} documents), scorer {scorer.name}: "
          f"{result.scorer_calls} scorer calls, {result.failed_slates} failed slates")
    print()
    for h in result.hits:
        text = " ".join(loaded.tree.text[loaded.tree.leaf_of(h.doc_id)].split())
        print(f"{h.rank:>3}. {h.doc_id}  p={h.score:.3f}  {_cut(text, args.width)}")
        for depth, (_, summary) in enumerate(h.path, start=1):
            print(f"{'':>6}{'  ' * (depth - 1)}└ {_cut(summary, args.width - 2 * depth)}")
    return 0


def cmd_tree_show(args) -> int:
    from tasks.tree.model import ROOT

    _, loaded = _load(args)
    tree = loaded.tree
    counts = tree.n_leaves()
    print(f"Tree {loaded.nodes.ref}: {tree.n_docs} documents, {len(tree.live_nodes())} nodes, height {tree.height()}, "
          f"summarizer {tree.summarizer}, space {tree.space}")
    print(f"root: {_cut(tree.text[ROOT], args.width)}")

    def show(v: int, depth: int) -> None:
        kids = tree.children[v]
        for c in kids[: args.breadth]:
            label = f"[doc {tree.doc_id[c]}] " if tree.is_leaf(c) else f"({counts[c]} docs) "
            print(f"{'  ' * depth}- {label}{_cut(tree.text[c], args.width - 2 * depth)}")
            if depth < args.depth:
                show(c, depth + 1)
        if len(kids) > args.breadth:
            print(f"{'  ' * depth}  … {len(kids) - args.breadth} more")

    show(ROOT, 1)
    return 0


def cmd_tree_list(args) -> int:
    from flows.cli import print_table

    _, cat, _ = _store(args)
    print_table(cat.query("SELECT d.name, d.version, d.row_count AS nodes, d.created_at, d.fingerprint "
                          "FROM datasets d WHERE d.is_current AND d.name LIKE 'tree_nodes/%' ORDER BY d.name"),
                args.format, args.width)
    return 0


def cmd_tree_search(args) -> int:
    from flows.cli import catalog_path
    from flows.search import search_flow

    catalog = args.catalog or (None if args.config else catalog_path(args))
    summary = search_flow(catalog=catalog, config_path=args.config,
                          tree=args.tree, queries_file=args.queries, k=args.k, scorer=args.scorer,
                          qids=args.qids, trec_out=args.trec_out)
    print(f"Searched {summary['queries']} queries in {summary['tree']}: {summary['calls_per_query']:.1f} scorer calls "
          f"per query ({summary['scorer']}), {summary['failed_slates']} failed slates, "
          f"{summary['quarantined']} queries quarantined")
    print(f"Run: {summary['dataset']} ({summary['rows']} rows){'' if summary['published'] else ' (unchanged)'}")
    if summary["trec_out"]:
        print(f"TREC run file: {summary['trec_out']}")
    return 0


def _cut(s: str, width: int) -> str:
    s = " ".join((s or "").split())
    width = max(width, 20)
    return s if len(s) <= width else s[: width - 1] + "…"


def register(app) -> None:
    import typer

    from flows.cli import CatalogOpt, ConfigOpt, FormatOpt, OutputFormat, QuietOpt, WidthOpt, ns, quiet_progress

    TreeOpt = Annotated[Optional[str], typer.Option("--tree", help="tree name (default: the config's tree.name, "
                                                    "else 'default')")]
    ScorerOpt = Annotated[Optional[Scorer], typer.Option("--scorer", help="default: the config's "
                                                         "tree.search.scorer")]

    @app.command("search-tree")
    def search_tree(query: Annotated[str, typer.Argument(help="the query text")], tree: TreeOpt = None,
                    k: Annotated[int, typer.Option("--k", min=1, help="documents to print")] = 10,
                    scorer: ScorerOpt = None,
                    beam: Annotated[Optional[int], typer.Option("--beam", help="B (default from the config)")] = None,
                    iterations: Annotated[Optional[int], typer.Option("--iterations", help="N (default from the "
                                                                      "config)")] = None,
                    width: WidthOpt = 110, format: FormatOpt = OutputFormat.table,
                    catalog: CatalogOpt = None, config: ConfigOpt = None) -> int:
        """Search a semantic tree (LATTICE) for one query; prints the ranking with each hit's path."""
        return cmd_search(ns(query=query, tree=tree, k=k, scorer=scorer.value if scorer else None, beam=beam,
                             iterations=iterations, width=width, format=format.value, catalog=catalog, config=config))

    @app.command("search-tree-queries")
    def search_tree_queries(queries: Annotated[Optional[str], typer.Option(
                                "--queries", help="TSV qid<TAB>text or JSONL (default: the catalog's passing "
                                "queries)")] = None,
                            tree: TreeOpt = None,
                            k: Annotated[Optional[int], typer.Option("--k", min=1, help="hits per query")] = None,
                            scorer: ScorerOpt = None,
                            qid: Annotated[Optional[list[str]], typer.Option("--qid", help="only this query id; "
                                                                             "repeat")] = None,
                            trec_out: Annotated[Optional[str], typer.Option("--trec-out", help="also write a TREC "
                                                                            "run file here")] = None,
                            catalog: CatalogOpt = None, config: ConfigOpt = None, quiet: QuietOpt = False) -> int:
        """Search the tree for every query of a set (the `search` flow); writes candidates/tree-NAME."""
        with quiet_progress(quiet):
            return cmd_tree_search(ns(queries=queries, tree=tree, k=k, scorer=scorer.value if scorer else None,
                                      qids=qid, trec_out=trec_out, catalog=catalog, config=config))

    tree_app = typer.Typer(help="Semantic trees: show, list.", no_args_is_help=True)
    app.add_typer(tree_app, name="tree")

    @tree_app.command("show")
    def tree_show(tree: TreeOpt = None,
                  depth: Annotated[int, typer.Option("--depth", min=1, help="levels to print")] = 2,
                  breadth: Annotated[int, typer.Option("--breadth", min=1, help="children printed per node")] = 10,
                  width: WidthOpt = 110, catalog: CatalogOpt = None, config: ConfigOpt = None) -> int:
        """Print the top of a tree."""
        return cmd_tree_show(ns(tree=tree, depth=depth, breadth=breadth, width=width, catalog=catalog, config=config))

    @tree_app.command("list")
    def tree_list(catalog: CatalogOpt = None, config: ConfigOpt = None, format: FormatOpt = OutputFormat.table,
                  width: WidthOpt = 60) -> int:
        """Trees in the catalog."""
        return cmd_tree_list(ns(catalog=catalog, config=config, format=format, width=width))
