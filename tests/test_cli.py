"""The command line's one convention (typer): --version, help on every argument, --format as the
output format everywhere, a bad build config refused before Prefect starts, `agreement` that
writes nothing without --save, lineage edges once, quarantine reason codes, and the Prefect
deployment's module entrypoint and time zone."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[1]


def _commands():
    import typer

    from flows.cli import app

    def walk(cmd, path):
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])
        else:
            yield " ".join(path), cmd

    return list(walk(typer.main.get_command(app), []))


def test_version_and_help(capsys):
    from flows.cli import main, version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"corpusforge {version()}"
    import os

    # quiet by default: no weight-loading bars, no Ray C++ warnings (unless the user set otherwise)
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] and os.environ["RAY_BACKEND_LOG_LEVEL"]
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("build", "search-tree", "search-index", "search-tree-queries", "agreement", "export"):
        assert name in out


def test_every_argument_has_help_and_the_flags_follow_one_convention():
    from flows.cli_mining import ExportKind
    from flows.cli_output import OutputFormat

    commands = _commands()
    assert len(commands) >= 20
    for name, cmd in commands:
        assert cmd.help, name
        for p in cmd.params:
            if p.name == "help":
                continue
            assert getattr(p, "help", None), f"{name}: {p.name} has no help text"
            opts = set(p.opts)
            assert not opts & {"--max-width", "--judges", "--runs", "--qids"}, (name, opts)
            if "--format" in opts:  # --format is the output format everywhere
                assert p.type_descriptor.annotation is OutputFormat, name
    long_running = {"build", "mine", "export", "judge", "evaluate", "train-judge", "search-tree-queries"}
    for name, cmd in commands:  # every command that runs long work takes --quiet, spelled the same
        if name in long_running:
            quiet = next((p for p in cmd.params if "--quiet" in p.opts), None)
            assert quiet is not None and set(quiet.opts) == {"--quiet", "-q"}, name
    export = dict(commands)["export"]
    kinds = next(p for p in export.params if p.name == "kind")
    assert kinds.multiple and "--format" not in {o for p in export.params for o in p.opts}
    assert {k.value for k in ExportKind} == {"flagembedding", "sentence-transformers", "mbeir", "trec", "parquet"}


def test_a_bad_build_config_fails_in_two_lines_before_prefect_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nembed: {batch_sizee: 3}\n")
    code = ("import sys; from flows.cli import main; rc = main(['build', '--config', sys.argv[1]]); "
            "print('flows.build' in sys.modules, 'prefect' in sys.modules); sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code, str(bad)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stdout.split() == ["False", "False"]  # neither the flow nor Prefect was imported
    err = run.stderr.strip().splitlines()
    assert len(err) == 2 and "invalid config" in err[0] and "embed.batch_sizee" in err[1]
    assert "Traceback" not in run.stderr

    empty = tmp_path / "nocorpus.yaml"
    empty.write_text("name: nocorpus\n")
    from flows.cli import main

    assert main(["build", "--config", str(empty)]) == 2


def test_usage_errors_exit_2_with_the_choices(capsys):
    from flows.cli import main

    assert main(["datasets", "--format", "xml"]) == 2
    assert "table" in capsys.readouterr().err


@pytest.fixture
def qrels(tmp_path):
    a = tmp_path / "alice.txt"
    b = tmp_path / "bob.txt"
    a.write_text("q1 0 d1 2\nq1 0 d2 0\nq2 0 d3 1\nq2 0 d4 3\n")
    b.write_text("q1 0 d1 2\nq1 0 d2 1\nq2 0 d3 1\nq2 0 d4 3\n")
    return a, b


def test_agreement_computes_without_writing_unless_saved(tmp_path, qrels, capsys):
    from flows.cli import main
    from tasks.runtime.catalog import Catalog

    a, b = qrels
    catalog = tmp_path / "work" / "catalog.duckdb"
    assert main(["agreement", "--catalog", str(catalog), "--reference", str(a), "--judge", str(b),
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["judge"] for r in rows] == ["bob"] and rows[0]["n_pairs"] == 4
    assert not catalog.exists() or Catalog(catalog).query("SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 0}]

    assert main(["agreement", "--catalog", str(catalog), "--reference", str(a), "--judge", str(b), "--save"]) == 0
    capsys.readouterr()
    cat = Catalog(catalog)
    assert cat.query("SELECT flow FROM runs").to_pylist() == [{"flow": "import-qrels"}]
    # now both are catalog judges: by name, read-only
    assert main(["agreement", "--catalog", str(catalog), "--reference", "alice", "--format", "csv"]) == 0
    assert "bob" in capsys.readouterr().out
    assert cat.query("SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 1}]


def test_lineage_prints_each_edge_once(tmp_path, capsys):
    """A diamond (c <- a, c <- b, both <- root): root's edges are reachable twice, printed once."""
    from flows.cli import main
    from tasks.runtime.catalog import Catalog

    cat = Catalog(tmp_path / "catalog.duckdb")
    with cat.connect() as con:  # the edges as publish records them: (child, version) -> (parent, version)
        con.executemany("INSERT INTO lineage VALUES (?, 1, ?, 1)",
                        [("left", "root"), ("right", "root"), ("joined", "left"), ("joined", "right")])
    assert main(["lineage", "joined", "--version", "1", "--catalog", cat.path, "--format", "json"]) == 0
    edges = [(e["name"], e["parent_name"], e["depth"]) for e in json.loads(capsys.readouterr().out)]
    assert edges == [("joined", "left", 1), ("joined", "right", 1), ("left", "root", 2), ("right", "root", 2)]


def test_reason_codes_group_reasons_that_differ_only_in_ids():
    from tasks.runtime.reasons import reason_code

    assert reason_code("image file not found: images/x.jpg") == "image_file_not_found"
    assert reason_code("query 12 has no text in topics.tsv") == reason_code("query q7 has no text in t.tsv")
    assert reason_code("duplicate id 'coco:1' with different content (first seen as document ab12)") == \
        "duplicate_id_with_different_content"
    assert reason_code("") == "unspecified"


OLD_QUARANTINE = """CREATE TABLE quarantine (run_id VARCHAR, stage VARCHAR NOT NULL, key VARCHAR NOT NULL,
    reason VARCHAR NOT NULL, payload VARCHAR, created_at TIMESTAMP NOT NULL)"""


def test_quarantine_code_column_is_added_to_an_old_catalog_and_groups(tmp_path, capsys):
    from flows.cli import main
    from tasks.runtime.catalog import Catalog

    path = tmp_path / "catalog.duckdb"
    con = duckdb.connect(str(path))
    con.execute(OLD_QUARANTINE)
    con.execute("INSERT INTO quarantine VALUES ('r1', 'ingest', 'a', 'image file not found: a.jpg', NULL, now()), "
                "('r1', 'ingest', 'b', 'image file not found: b.jpg', NULL, now())")
    con.close()
    cat = Catalog(path)
    Catalog(path)  # idempotent: a second open changes nothing
    cat.add_quarantine("r2", pa.table({"stage": ["ingest"], "key": ["c"], "reason": ["image file not found: c.jpg"],
                                       "payload": pa.nulls(1, pa.string())}))
    assert main(["quarantine", "--catalog", str(path), "--summary", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["code"], r["n"]) for r in rows] == [("ingest", "image_file_not_found", 3)]


def test_the_deployment_has_a_module_entrypoint_and_a_time_zone(prefect_harness):
    from flows.deployments import deployment
    from schemas.config import ConfigError
    from tests.conftest import SAMPLE_CONFIG

    d = deployment(str(SAMPLE_CONFIG), "0 3 * * *", timezone="Europe/Berlin")
    assert d.entrypoint == "flows.build.build"  # importable from any directory
    assert d.name == "refresh-sample" and d.parameters == {"config_path": str(SAMPLE_CONFIG.resolve())}
    (schedule,) = d.schedules
    assert schedule.schedule.cron == "0 3 * * *" and schedule.schedule.timezone == "Europe/Berlin"
    with pytest.raises(ConfigError, match="unknown time zone"):
        deployment(str(SAMPLE_CONFIG), "0 3 * * *", timezone="Mars/Olympus")


def test_artifact_keys_name_the_corpus():
    from tasks.runtime.prefect_support import artifact_key

    assert artifact_key("sample", "build-stages") == "sample-build-stages"
    assert artifact_key("My_Corpus.v2", "progress-embed_text") == "my-corpus-v2-progress-embed-text"


def test_an_error_the_user_can_fix_is_one_line_with_the_remedy(tmp_path, prefect_harness):
    """`export` on a catalog without negatives, through the Prefect flow, as a user runs it (a
    subprocess on the session's Prefect API): exit 1, the remedy, and no traceback, neither ours
    nor the one Prefect's run loggers would print for the failed task."""
    import os

    from prefect.settings import PREFECT_API_URL

    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "INFO"}
    run = subprocess.run([sys.executable, "-m", "flows.cli", "export", "--catalog", str(tmp_path / "c.duckdb"),
                          "--kind", "flagembedding", "--out", str(tmp_path / "o"), "--quiet"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "error: the flagembedding export needs mined negatives" in run.stderr and "corpusforge mine" in run.stderr
    assert "Task run 'export'" in run.stderr  # Prefect did log the failure ...
    assert "Traceback" not in run.stderr + run.stdout  # ... as one line
