"""Progress of a stage's work, shown where the user is looking.

- In a terminal: a tqdm bar per stage (items done / total, rate, ETA).
- In logs, or when stderr is not a terminal: a line every `CORPUSFORGE_PROGRESS_EVERY` seconds
  (default 10), and one at the end.
- In the Prefect UI: a progress artifact per stage, updated as batches finish.
`--quiet` (or CORPUSFORGE_QUIET=1) turns all of it off.
"""
from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("corpusforge.progress")


def quiet_by_env() -> bool:
    return os.environ.get("CORPUSFORGE_QUIET", "") not in ("", "0", "false")


class Progress:
    def __init__(self, stage: str, *, quiet: bool = False, logger=None, every_s: float | None = None,
                 corpus: str = "", unit: str = "item"):
        self.stage, self.corpus, self.unit = stage, corpus, unit
        self.quiet = quiet or quiet_by_env()
        self.logger = logger or log
        self.every_s = every_s if every_s is not None else float(os.environ.get("CORPUSFORGE_PROGRESS_EVERY", "10"))
        self.total = 0
        self.done = 0
        self.t0 = time.monotonic()
        self.last_line = self.t0
        self.last_artifact = 0.0
        self.bar = None
        self.artifact_id = None

    @classmethod
    def for_stage(cls, stage: str, **kwargs) -> "Progress":
        return cls(stage, **kwargs)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close(failed=exc[0] is not None)

    # -- the runner calls these -------------------------------------------------------------
    def start(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        if self.quiet or total == 0:
            return
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.stage, unit=self.unit, dynamic_ncols=True, leave=True)
        else:
            self.logger.info("%s: %d %ss to process", self.stage, total, self.unit)
        self._artifact(force=True)

    def extend(self, n: int) -> None:
        """More items to do (a streaming stage learns its total chunk by chunk)."""
        if n <= 0:
            return
        if self.total == 0 and self.bar is None:
            done = self.done
            self.start(n)
            self.done = done
            return
        self.total += n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def advance(self, n: int) -> None:
        self.done += n
        if self.quiet or self.total == 0:
            return
        if self.bar is not None:
            self.bar.update(n)
        now = time.monotonic()
        if self.bar is None and now - self.last_line >= self.every_s:
            self.last_line = now
            self.logger.info("%s", self.line())
        self._artifact()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = f"{left:.0f}s" if left == left else "?"
        return (f"{self.stage}: {self.done}/{self.total} {self.unit}s ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:.1f} {self.unit}s/s, ETA {eta}")

    def close(self, failed: bool = False) -> None:
        if self.quiet or self.total == 0:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        else:
            self.logger.info("%s%s", self.line(), " (failed)" if failed else "")
        self._artifact(force=True)

    # -- Prefect ------------------------------------------------------------------------------
    def _artifact(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_artifact < 2.0:
            return
        self.last_artifact = now
        try:
            from prefect.context import TaskRunContext

            if TaskRunContext.get() is None:
                return
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            from tasks.runtime.prefect_support import artifact_key

            pct = 100.0 * self.done / max(self.total, 1)
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    progress=pct, key=artifact_key(self.corpus or "corpus", f"progress-{self.stage}"),
                    description=f"{self.stage}: {self.unit}s done of {self.total}")
            else:
                update_progress_artifact(artifact_id=self.artifact_id, progress=pct)
        except Exception as e:  # noqa: BLE001 - progress is a view, never a reason to fail
            log.debug("no progress artifact: %s", e)


def trainer_progress(stage: str, corpus: str = ""):
    """A transformers `TrainerCallback` that shows a trainer's optimisation steps as this module's
    progress (bar, log lines, Prefect artifact, `--quiet`), in place of the trainer's own tqdm bar."""
    from transformers.trainer_callback import TrainerCallback

    class StepProgress(TrainerCallback):
        def __init__(self):
            self.progress = Progress(stage, corpus=corpus, unit="step")

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress.start(int(state.max_steps or 0))

        def on_step_end(self, args, state, control, **kwargs):
            self.progress.advance(state.global_step - self.progress.done)

        def on_train_end(self, args, state, control, **kwargs):
            self.progress.close()

    return StepProgress()
