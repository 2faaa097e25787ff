"""Config loading refuses what would hang, inject or be silently lost: alias bombs, names that are
not names, repeated keys, numbers no stage can use."""
from __future__ import annotations

import subprocess
import sys

import pytest

from schemas.config import ConfigError, load_config
from tests.conftest import REPO

BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_yaml_alias_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 1024
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config(path)


def test_ordinary_anchors_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("name: anchors\nx-root: &root /tmp/c\ncorpus:\n  root: *root\n  sources:\n"
                    "    - {kind: manifest, path: a.jsonl}\n")
    with pytest.raises(ConfigError, match="x-root"):  # the anchor holder is an unknown key, as usual
        load_config(path)
    path.write_text("name: anchors\ncorpus:\n  root: &r /tmp/c\n  sources:\n    - {kind: manifest, path: a.jsonl}\n"
                    "tree: {name: t1}\n")
    assert load_config(path).tree.name == "t1"


@pytest.mark.parametrize("name", ["a\t'b", 'x"; DROP TABLE datasets; --', "../up", "", "a/b"])
def test_names_that_reach_sql_or_paths_are_validated(tmp_path, name):
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"tree": {"name": name}}))
    with pytest.raises(ConfigError, match="tree.name"):
        load_config(path)


def test_a_repeated_key_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nembed:\n  text: {batch_size: 8}\n  text: {batch_size: 16}\n")
    with pytest.raises(ConfigError, match=r"key 'text' appears twice in one mapping \(lines 3 and 4\)"):
        load_config(path)
    path.write_text("name: a\nx: &b {batch_size: 8}\nembed:\n  text:\n    <<: *b\n    model: m\n")
    with pytest.raises(ConfigError, match=r"- x: Extra inputs"):  # a merge key is no repeat; only x is unknown
        load_config(path)


@pytest.mark.parametrize("field,value", [("embed.text.batch_size", 10**25), ("negatives.seed", -(2**40)),
                                         ("index.ivf_nlist", 2**31)])
def test_numbers_past_int32_are_refused_naming_the_field(tmp_path, field, value):
    import yaml

    section, *rest = field.split(".")
    node: dict = {}
    cur = node
    for key in rest[:-1]:
        cur = cur.setdefault(key, {})
    cur[rest[-1]] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({section: node}))
    with pytest.raises(ConfigError, match=rf"{field}: .*out of range"):
        load_config(path)


def test_dataset_names_are_checked_at_the_write_path():
    from tasks.runtime.sql import check_dataset_name

    assert check_dataset_name("tree_nodes/default") == "tree_nodes/default"
    for bad in ["tree_nodes/a\t'b", "x/../../etc", "/abs", "a//b", 'q"x']:
        with pytest.raises(ValueError, match="not a valid dataset name"):
            check_dataset_name(bad)


def test_importing_flows_sets_a_generous_prefect_startup_wait():
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", "import flows, os; "
                          "print(os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'])"],
                         capture_output=True, text=True, env=env, check=True, cwd=REPO)
    assert int(out.stdout.strip()) >= 60
