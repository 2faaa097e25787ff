"""Progress of a stage when stderr is not a terminal: log lines while the work runs (not only at
the end), with items done / total, rate and ETA; `--quiet` (CORPUSFORGE_QUIET) turns them off."""
from __future__ import annotations

import logging
import re

import pyarrow as pa
import pytest

from tasks.runtime.stage import KEY, Resources, Work
from tests.stages import run_one
from tests.test_stage_contract import OUT, Words, config

EVENTS: list[tuple[str, str]] = []


class Recording:
    """Upper-cases a batch and notes it, so the test sees the order of batches and progress lines."""

    def __init__(self, args: dict, device: str = "cpu"):
        pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        words = batch["word"].to_pylist()
        EVENTS.append(("batch", ",".join(words)))
        return pa.table({KEY: batch[KEY], "upper": [w.upper() for w in words]})


class SlowWords(Words):
    name = "slow_words"

    def work(self) -> Work:
        return Work(Recording, {}, ["word"], OUT, Resources(where="local", batch_size=1, uses_gpu=False),
                    cached=False, model=False)


class Lines(logging.Handler):
    def emit(self, record):
        EVENTS.append(("line", record.getMessage()))


@pytest.fixture
def lines():
    EVENTS.clear()
    handler = Lines(level=logging.INFO)
    logger = logging.getLogger("corpusforge")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield EVENTS
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_progress_lines_appear_while_the_stage_runs(tmp_path, monkeypatch, lines):
    monkeypatch.setenv("CORPUSFORGE_PROGRESS_EVERY", "0")  # a line per finished batch
    monkeypatch.delenv("CORPUSFORGE_QUIET", raising=False)
    cfg = config(tmp_path)
    _, summary = run_one(cfg, SlowWords(cfg))
    assert summary["rows_out"] == 5
    progress = [(i, m) for i, (kind, m) in enumerate(lines) if kind == "line" and m.startswith("slow_words: ")]
    batches = [i for i, (kind, _) in enumerate(lines) if kind == "batch"]
    assert len(batches) == 5
    done = [(i, int(m.group(1)), int(m.group(2))) for i, line in progress
            if (m := re.match(r"slow_words: (\d+)/(\d+) items \(\d+%\), [\d.]+ items/s, ETA \S+", line))]
    assert done and all(total == 5 for _, _, total in done)
    # lines with part of the work done, printed before the last batch ran: progress while it runs
    assert any(0 < n < 5 and i < batches[-1] for i, n, _ in done)
    assert done[-1][1] == 5  # and the final count


def test_quiet_turns_progress_off(tmp_path, monkeypatch, lines):
    monkeypatch.setenv("CORPUSFORGE_PROGRESS_EVERY", "0")
    monkeypatch.setenv("CORPUSFORGE_QUIET", "1")
    cfg = config(tmp_path)
    run_one(cfg, SlowWords(cfg))
    assert [e for e in lines if e[0] == "batch"]
    assert not [m for kind, m in lines if kind == "line" and re.match(r"slow_words: \d+/\d+ items", m)]


def test_training_steps_show_as_progress(monkeypatch, lines):
    """Fine-tuning (evaluate, train-judge) reports optimisation steps through the same progress, so
    a 7-minute training is not silent in logs and `--quiet` silences it too."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from tasks.runtime.progress import trainer_progress

    monkeypatch.setenv("CORPUSFORGE_PROGRESS_EVERY", "0")
    monkeypatch.delenv("CORPUSFORGE_QUIET", raising=False)
    args, state, control = TrainingArguments(output_dir="unused", report_to="none"), TrainerState(), TrainerControl()
    state.max_steps = 4
    cb = trainer_progress("train export")
    cb.on_train_begin(args, state, control)
    for step in range(1, 5):
        state.global_step = step
        cb.on_step_end(args, state, control)
    cb.on_train_end(args, state, control)
    steps = [m for kind, m in lines if kind == "line" and m.startswith("train export: ")]
    assert steps[0] == "train export: 4 steps to process"
    assert [int(re.match(r"train export: (\d+)/4 steps", m).group(1)) for m in steps[1:]] == [1, 2, 3, 4, 4]
    lines.clear()
    monkeypatch.setenv("CORPUSFORGE_QUIET", "1")
    cb = trainer_progress("train export")
    cb.on_train_begin(args, state, control)
    cb.on_step_end(args, state, control)
    assert not [m for kind, m in lines if kind == "line"]
