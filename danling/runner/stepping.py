"""Training counted in optimizer steps: passes over the data until `step_end`, evaluating every `eval_interval` steps.

Part of the training loop of [`TorchRunner`][danling.TorchRunner], for runs whose length is given
by `step_end` (or `iter_end`) with no `epoch_end`, as large models are trained. Each pass over the training data
is one `train_epoch` (`config.epochs` counts the passes, so a pass has its own shuffled order and resumes inside
itself exactly as an epoch does); accumulation windows close at a pass's end, as at an epoch's.

At each evaluation (every `eval_interval` optimizer steps, and once more at the end), the result
`{train split: averages since the previous evaluation, evaluation split: its result}` is appended to `results` at
index `config.steps`; best score, `is_best`, `patience` (counted in evaluations), `best.pth` and
`results_table()` work on those. `latest` is saved after each evaluation and every `checkpoint_interval` steps,
with the position inside the pass, so a resumed run continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chanfig import NestedDict

from .config import interval
from .meta import RunnerMode
from .parts import RunnerParts
from .progress import inner_bars
from .results import with_header

__all__ = ["StepTraining", "step_label"]


class StepTraining(RunnerParts):
    """`train` by optimizer steps; see the module's documentation."""

    # Set by `train` when it trains by steps: the splits to evaluate, and how the run ended early, if it did.
    _step_evaluate_splits: Sequence[str] | None = None
    _stopping: str | None = None
    # Split and batches done of the pass that ended last, for the final evaluation's checkpoint position.
    _pass_position: tuple[str, int] | None = None
    _measured_split: str | None = None

    def _train_by_steps(self, train_splits: Sequence[str], evaluate_splits: Sequence[str]) -> str:
        """Pass over `train_splits` until `step_end`/`iter_end`, evaluating on the way; returns how the run ended."""
        self._step_evaluate_splits, self._stopping, self._measured_split = list(evaluate_splits), None, None
        try:
            passes = self.config.epoch_begin
            while not self._reached_end():
                self.config.epochs = passes
                iters, resuming = self.config.iters, self._resume_position is not None
                for split in train_splits:
                    self.train_epoch(split)
                    if self._reached_end():
                        break
                # A resumed pass may have had nothing left; a fresh one with no batch would loop forever.
                if self.config.iters == iters and not resuming:
                    raise ValueError(f"cannot train by steps: a pass over {list(train_splits)} holds no batch")
                passes += 1
            if self._stopping is None and self._pass_position is not None and not self._evaluated_at_this_step():
                split, batches = self._pass_position
                self._evaluate_and_save(split, batches)
            return self._stopping or "finished"
        finally:
            self._step_evaluate_splits = self._pass_position = self._stopping = None

    def _evaluated_at_this_step(self) -> bool:
        return bool(self.results) and next(reversed(self.results)) == self.config.steps

    def _step_evaluation_due(self) -> bool:
        """Whether the optimizer step just taken is one to evaluate at, when training by steps (the last one is left
        to `_train_by_steps`)."""
        if self._reached_end():
            return False
        period = interval(self.config.eval_interval)
        return bool(period) and self.config.steps % period == 0

    def _evaluate_and_save(self, split: str, batches_done: int) -> None:
        """Evaluate at this step, record the result, save `latest` (and `best`) with the position in the pass."""
        self._record_step_result(split)
        if self.config.save_checkpoints:
            self._save_inside_pass(split, batches_done, evaluated=True)

    def _record_step_result(self, split: str) -> None:
        """Append `{split: training averages since the last evaluation, evaluation splits: results}` at this step."""
        result = NestedDict({split: self.get_epoch_result()})
        with inner_bars():
            for evaluate_split in self._step_evaluate_splits or ():
                result[evaluate_split] = self.evaluate_epoch(evaluate_split)
        self.mode = RunnerMode.train
        self.split = split
        self._reset_measures()  # the next result averages the steps after this one
        steps = self.config.steps
        self.append_result(result, index=steps)
        print(with_header(step_label(self), self.format_result(result)))
        self.save_result()
        for name, split_result in result.items():
            self.write_result(split_result, f"{name}/evaluation", steps=steps)
        patience = self.config.get("patience")
        if patience and self._evaluations_since_best() >= patience:
            print(f"early stop: no better {self.config.score_name} for {patience} evaluations")
            self._stopping = "stopped_early"

    def _evaluations_since_best(self) -> int:
        scores: Mapping = self.scores or {}
        if not scores:
            return 0
        indices = list(scores)
        return len(indices) - 1 - indices.index(self.best_index)


def step_label(runner: Any) -> str:
    """The name of a step in the result lines: `step [s/step_end]` (or `step [s]` when only `iter_end` is set)."""
    step_end = runner.config.step_end
    return f"step [{runner.config.steps}/{step_end}]" if step_end else f"step [{runner.config.steps}]"
