"""The Stage contract and its one runner: the runner's own accounting, per-item isolation,
fingerprints that ignore resources, and the write path against a real catalog."""
from __future__ import annotations

import pyarrow as pa
import pytest

from schemas.config import config_from_dict
from tasks.runtime.accounting import AccountingError
from tasks.runtime.stage import KEY, UNIT, Assembled, Resources, Stage, Units, Work, resource_fields
from tests.stages import run_one, run_pure

ITEMS = ["alpha", "bravo", "charlie", "delta", "echo"]
OUT = pa.schema([("upper", pa.string())])


class Shout:
    """A model-free work that raises on one item: the runner must quarantine that one only."""

    def __init__(self, args: dict, device: str = "cpu"):
        self.bad = args["bad"]

    def __call__(self, batch: pa.Table) -> pa.Table:
        words = batch["word"].to_pylist()
        if self.bad in words:
            raise ZeroDivisionError(f"cannot shout {self.bad!r}")
        return pa.table({KEY: batch[KEY], "upper": [w.upper() for w in words]})


class Words(Stage):
    """A test stage: one unit per word, the work upper-cases it, assemble publishes `documents`."""

    name = "words"
    writes = ("documents",)
    drop = 0  # assemble forgets this many units (an accounting bug)

    def units(self, inputs) -> Units:
        words = pa.array(self.params.get("words", ITEMS), pa.string())
        return Units(pa.table({UNIT: words, KEY: words, "word": words}))

    def work(self) -> Work:
        return Work(Shout, {"bad": self.params.get("bad")}, ["word"], OUT,
                    Resources(where="local", batch_size=self.params.get("batch", 8), uses_gpu=False),
                    cached=False, model=False)

    def assemble(self, inputs, units, results) -> Assembled:
        upper = dict(zip(results[KEY].to_pylist(), results["upper"].to_pylist())) if results is not None else {}
        ids = units[UNIT].to_pylist()[self.drop:]
        docs = pa.table({"doc_id": [f"{i:032x}" for i in range(len(ids))], "modality": ["text"] * len(ids),
                         "text": [upper[k] for k in ids], "source": ["test"] * len(ids)})
        return Assembled({"documents": _documents(docs)}, ids)


def _documents(t: pa.Table) -> pa.Table:
    from schemas.tables import DOCUMENTS

    cols = {f.name: (t[f.name] if f.name in t.column_names else pa.nulls(t.num_rows, f.type)) for f in DOCUMENTS}
    return pa.table(cols, schema=DOCUMENTS)


def config(tmp_path):
    return config_from_dict({"workdir": str(tmp_path / "work")})


def test_a_stage_whose_counts_do_not_add_up_is_refused_with_the_four_numbers(tmp_path):
    stage = Words(config(tmp_path))
    stage.drop = 2
    with pytest.raises(AccountingError) as err:
        run_pure(stage)
    msg = str(err.value)
    assert "in=5" in msg and "out=3" in msg and "quarantined=0" in msg and "deduplicated=0" in msg
    assert "2 units vanished" in msg


def test_one_item_that_raises_is_quarantined_and_the_rest_is_published(tmp_path):
    cfg = config(tmp_path)
    refs, summary = run_one(cfg, Words(cfg, bad="charlie"))
    assert (summary["rows_in"], summary["rows_out"], summary["rows_quarantined"]) == (5, 4, 1)
    from tasks.runtime.lifecycle import Run

    run = Run.open(cfg)
    assert sorted(run.read("documents")["text"].to_pylist()) == ["ALPHA", "BRAVO", "DELTA", "ECHO"]
    q = run.catalog.query("SELECT stage, key, reason FROM quarantine").to_pylist()
    assert q == [{"stage": "words", "key": "charlie", "reason": "ZeroDivisionError: cannot shout 'charlie'"}]
    row = run.catalog.query("SELECT status, rows_in, rows_out, rows_quarantined FROM stage_runs").to_pylist()
    assert row == [{"status": "completed", "rows_in": 5, "rows_out": 4, "rows_quarantined": 1}]


def test_a_failing_stage_still_records_its_stage_run_and_the_run_fails(tmp_path):
    cfg = config(tmp_path)

    class Broken(Words):
        def assemble(self, inputs, units, results):
            raise RuntimeError("assembly blew up")

    with pytest.raises(RuntimeError, match="assembly blew up"):
        run_one(cfg, Broken(cfg))
    from tasks.runtime.catalog import Catalog

    cat = Catalog(cfg.catalog_path)
    assert cat.query("SELECT status, message FROM stage_runs").to_pylist() == [
        {"status": "failed", "message": "RuntimeError: assembly blew up"}]
    assert cat.query("SELECT status FROM runs").to_pylist() == [{"status": "failed"}]


def test_batch_size_does_not_change_the_outcome(tmp_path):
    a = run_pure(Words(config(tmp_path), bad="delta", batch=1))
    b = run_pure(Words(config(tmp_path), bad="delta", batch=64))
    assert a.table("documents").equals(b.table("documents")) and a.quarantine.equals(b.quarantine)


def _stages():
    from flows.build import STAGES
    from tasks.export.stage import Export
    from tasks.judge.imports import ImportQrels, ImportRun
    from tasks.tree.search_stage import Search

    return list(STAGES) + [Search, Export, ImportQrels, ImportRun]


def _other(name: str, value):
    """Another valid value for a resource field."""
    if name == "device":
        return "cpu" if value != "cpu" else "auto"
    if name == "api_key_env":
        return "SOME_OTHER_KEY_ENV"
    if name == "api_key_secret":
        return "some-other-secret-block"
    if value is None:
        return 2
    if isinstance(value, bool):  # a switch: the other setting
        return not value
    if hasattr(value, "model_dump"):  # a resource sub-section (where a build step runs): change every field
        return {k: _other(k, v) for k, v in value.model_dump().items()}
    return value * 3 if value else 1


def _resource_variant(raw: dict, section: str) -> dict:
    """The config with every resource field of a section set to another valid value."""
    import copy
    from functools import reduce

    from schemas.config import BuildConfig

    full = BuildConfig.model_validate(raw)
    base = reduce(getattr, section.split("."), full)
    changed = copy.deepcopy(full.model_dump(mode="json"))
    for dotted in resource_fields(base):
        *path, leaf = section.split(".") + dotted.split(".")
        node = changed
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = _other(leaf, reduce(getattr, dotted.split("."), base))
    return changed


@pytest.mark.parametrize("cls", _stages(), ids=lambda c: c.name)
def test_resource_fields_never_change_a_fingerprint(cls, tmp_path):
    raw = {"corpus": {"root": str(tmp_path), "sources": [{"kind": "manifest", "path": "x"}]},
           "embed": {"image": {"model": "some/clip"}}, "judge": {"enabled": True, "answerability": True}}
    params = {"format": "parquet"} if cls.name == "export" else {"paths": [str(tmp_path)]} if "import" in cls.name else {}
    section = cls.section or "flow"
    a = cls(config_from_dict(raw), **params)
    varied = _resource_variant(raw, section if cls.section else "embed")
    b = cls(config_from_dict(varied), **params)
    if section != "flow":
        assert resource_fields(_section(a)) or cls.name in ("ingest", "answerability", "tree", "search", "export")
    assert a.fingerprint() == b.fingerprint() and a.work_fingerprint() == b.work_fingerprint()
    # search's slate scorer sizes itself; ingest's resource is its chunk size, which shapes its units
    if resource_fields(_section(a)) and cls.name not in ("search", "ingest"):
        assert a.resources() != b.resources() or a.work() is None  # the change did reach the resources


def _section(stage):
    return stage.cfg if stage.cfg is not None else stage.config.flow


def test_the_work_cache_finds_keys_across_shards_and_reads_values_only_where_they_are(tmp_path):
    """Lookups read the key column of every shard and the values of the shards holding a hit only;
    whichever shards hold them, every cached key comes back once with its own value."""
    import pyarrow.parquet as pq

    from tasks.runtime.cache import WorkCache
    from tasks.runtime.storage import DataRoot

    cache = WorkCache(DataRoot(str(tmp_path)), "embed_text", "fp")
    for s in range(4):
        cache.append(pa.table({KEY: [f"k{s}-{i}" for i in range(50)], "value": [s * 100 + i for i in range(50)]}))
    cache.append(pa.table({KEY: ["k1-3"], "value": [103]}))  # a resumed run wrote a key twice
    wanted = ["k1-3", "k3-49", "nope", "k1-7"]
    got = cache.lookup_table(wanted, ["value"])
    assert sorted(zip(got[KEY].to_pylist(), got["value"].to_pylist())) == [("k1-3", 103), ("k1-7", 107), ("k3-49", 349)]
    hit, missing = cache.lookup(wanted)
    assert missing == {"nope"} and sorted(hit[KEY].to_pylist()) == ["k1-3", "k1-7", "k3-49"]
    assert cache.known(wanted) == {"k1-3", "k1-7", "k3-49"}
    none = cache.lookup_table(["absent"], ["value"])
    assert none.num_rows == 0 and none.column_names == [KEY, "value"]
    assert len(cache._shards()) == 5 and all(pq.read_metadata(p).num_rows for p in cache._shards())
