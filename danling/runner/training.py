"""The training loop, written once for every backend: epochs, accumulation windows, logging, preemption, resume."""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from warnings import warn

import torch
from chanfig import NestedDict

from ..utils import distributed as du
from .config import interval
from .meta import RunnerMode
from .parts import RunnerParts
from .preemption import Preempted, PreemptionAgreement, PreemptionWatcher
from .profiling import ProfilerWindow, profile_window
from .samplers import TrainingSampler
from .stepping import StepTraining
from .throughput import Throughput, batch_samples

__all__ = ["TrainingLoop"]


class TrainingLoop(StepTraining, RunnerParts):
    """`train`, `train_epoch`, `train_step`, `advance` and `step`; part of [`TorchRunner`][danling.TorchRunner].

    The loop never asks which backend runs it: the backend supplies `backward`, `clip_gradients`,
    `optimizer_step`, `update_ema`, `accumulate` and `autocast`.
    """

    # Position of the current micro-batch within its epoch, set by `train_epoch`, so accumulation windows close
    # at the epoch's end: a checkpoint taken between epochs then never holds half-accumulated gradients.
    _epoch_iteration: int | None = None
    _epoch_length: int | None = None
    _preemption: PreemptionWatcher | None = None
    _profiler: ProfilerWindow | None = None
    _throughput: Throughput | None = None
    _agreement: PreemptionAgreement | None = None
    # The epoch's result so far, and where inside the epoch a checkpoint being written was taken.
    _epoch_result: NestedDict | None = None

    def train(
        self, train_splits: Sequence[str] | None = None, evaluate_splits: Sequence[str] | None = None
    ) -> NestedDict:
        """Train from `epoch_begin` to `epoch_end`, evaluating after every epoch; or by steps, up to `step_end`.

        Each epoch's result `{split: {metric: value}}` is appended to `results`, printed, saved to the run
        directory and written to TensorBoard; a checkpoint is saved (`latest`, and `best` when best, unless
        `config.save_checkpoints` is off). Training stops early after `config.patience` epochs without a new
        best score, or when `iter_end`/`step_end` is reached.

        With `step_end` (or `iter_end`) and no `epoch_end`, the run is counted in optimizer steps: it passes over
        the data as often as needed, stops exactly at `step_end`, evaluates every `config.eval_interval` steps and
        at the end, and indexes `results` by step (see [`danling.runner.stepping`][danling.runner.stepping]).

        Returns:
            `results`.
        """
        train_splits = list(train_splits) if train_splits is not None else self.train_splits
        evaluate_splits = list(evaluate_splits) if evaluate_splits is not None else self.evaluate_splits
        if not train_splits:
            raise ValueError(
                f"nothing to train on: no split named train*, and train_splits is empty; splits: {self._splits()}"
            )
        missing = [split for split in [*train_splits, *evaluate_splits] if split not in self.dataloaders]
        if missing:
            raise ValueError(f"no dataloader for split(s) {missing}; there are: {list(self.dataloaders.keys())}")
        by_steps = self.trains_by_steps
        window = profile_window(self.config.get("profile"))  # a bad window stops the run before anything starts
        if self.config.epoch_end is None and not by_steps:
            raise ValueError("train needs config.epoch_end, or step_end or iter_end to train by steps; none is set")
        unset = [name for name in ("model", "criterion", "optimizer") if getattr(self, name) is None]
        if unset:
            raise ValueError(f"train needs {', '.join(unset)}: assign self.{unset[0]} in your runner's __init__")
        # Before anything is written: a node that cannot see the main process's checkpoints stops every process now,
        # not at the first save (with a partial checkpoint) or at a resume.
        du.check_shared_directory(self.checkpoint_dir, "checkpoint directory")
        self.write_config_file()
        self.write_run_state("running")
        self.trackers.start()  # with the whole config, before the first step
        if window is not None:
            self._profiler = ProfilerWindow(window, os.path.join(self.dir, "profile"), self.rank)
        outcome = "crashed"
        with PreemptionWatcher(announce=self.is_main_process) as watcher:
            self._preemption = watcher
            # Every process creates it here, together: its first use creates a process group, a collective.
            self._agreement = PreemptionAgreement() if self.distributed else None
            try:
                if by_steps:
                    end_state = self._train_by_steps(train_splits, evaluate_splits)
                else:
                    end_state = self._train_by_epochs(train_splits, evaluate_splits)
                # The run has ended only once its last checkpoint is on disk (written in the background, maybe).
                self.wait_for_checkpoint()
            except Preempted as preempted:
                # Preempted promises a saved state: a save that failed in the background is the error to raise.
                # Every process stops at the same step, so waiting here may be collective (FSDP's publication).
                try:
                    self.wait_for_checkpoint()
                except Exception as failure:
                    self._record_failure("crashed", error=f"{type(failure).__name__}: {failure}")
                    raise failure from preempted
                outcome = "interrupted"
                self._record_failure("interrupted", signal=signal.Signals(preempted.signum).name)
                raise
            except KeyboardInterrupt:
                outcome = "interrupted"
                self._record_failure("interrupted", signal="SIGINT")
                raise
            except Exception as error:
                message = f"{type(error).__name__}: {error}"
                silent = du.unanswered_ranks() if self.distributed and du.is_timeout(error) else None
                if silent:
                    # gloo's timeout does not say whom it waited for; the processes still alive can.
                    note = f"rank(s) {', '.join(map(str, silent))} did not answer (stopped, stuck or gone)"
                    sys.stderr.write(f"danling: rank {self.rank}: {note}\n")  # the runner's print is for rank 0
                    message = f"{message}; {note}"
                    if hasattr(error, "add_note"):
                        error.add_note(note)
                self._record_failure("crashed", error=message)
                raise
            else:
                self._close_agreement()
                outcome = end_state
                self.write_run_state(end_state)
            finally:
                # After a crash, the save in flight is still completed and published (or the previous `latest` is
                # left); its own failure, if any, is only reported: the crash is the error to raise.
                unsaved = self.wait_for_checkpoint(raise_error=False)
                if unsaved is not None:
                    warn(f"the checkpoint being written when training stopped failed: {unsaved}", stacklevel=2)
                # After an error the others may never start the exchange this process waits for: wait a little only.
                self._close_agreement(timeout=10.0)
                self._preemption = self._epoch_result = None
                if self._profiler is not None:
                    self._profiler.stop()
                    self._profiler = None
                # TensorBoard's writer is flushed and stays open; W&B and MLflow runs are closed with the outcome.
                self.trackers.finish(outcome)
        return self.results

    def _train_by_epochs(self, train_splits: Sequence[str], evaluate_splits: Sequence[str]) -> str:
        """Epochs `epoch_begin` to `epoch_end - 1`, each trained then evaluated; returns how the run ended."""
        patience = self.config.get("patience")
        epoch_end = self.config.epoch_end or 0  # set: `train` trains by epochs only then
        for epoch in range(self.config.epoch_begin, epoch_end):
            self.config.epochs = epoch
            result = self._epoch_result = self._resumed_partial_result(epoch)
            for split in train_splits:
                if split not in result:
                    result[split] = self.train_epoch(split)
            for split in evaluate_splits:
                result[split] = self.evaluate_epoch(split)
            self._epoch_result = None
            self.append_result(result, index=epoch)
            print(self.format_epoch_result(result))
            self.save_result()
            for split, split_result in result.items():
                self.write_result(split_result, f"{split}/epoch", steps=epoch)
            self.collect_process_state()
            if self.config.save_checkpoints:
                self.save_checkpoint()
            self.write_run_state("running")
            if self._reached_end():
                break
            if patience and epoch - self.best_index >= patience:
                print(f"early stop: no better {self.config.score_name} for {patience} epochs")
                return "stopped_early"
        return "finished"

    def _record_failure(self, state: str, **info: Any) -> None:
        # The error that ended the run is what the user must see: a run.json that cannot be written (the disk that
        # just filled up, say) must not replace it.
        try:
            self.write_run_state(state, **info)
        except OSError as error:
            warn(f"could not record the run's state {state!r}: {error}", RuntimeWarning, stacklevel=3)

    def _resumed_partial_result(self, epoch: int) -> NestedDict:
        # Splits an interrupted epoch had already finished keep their results; the rest run as usual.
        position = self._resume_position
        if position is None or epoch != self.config.epochs:
            return NestedDict()
        return NestedDict(position.get("finished", {}))

    def _reached_end(self) -> bool:
        # Attribute reads: chanfig mirrors top-level keys as attributes, far cheaper than get() on every step.
        step_end, iter_end = self.config.step_end, self.config.iter_end
        return bool(
            (step_end and self.config.steps >= step_end)
            or (iter_end and self.config.iters >= iter_end)
            or self._stopping
        )

    def train_epoch(self, split: str = "train") -> NestedDict:
        """One pass over `split` with the model in training mode; returns the epoch result.

        When the run resumes from a checkpoint taken inside this epoch, the pass continues with the next batch
        of the same order: the sampler skips what was done (those samples are never loaded), and meters and
        metrics continue from their saved state.
        """
        loader = self.dataloaders[split]
        self.mode = RunnerMode.train
        self.split = split
        sampler = self.datasamplers.get(split) if split in self.datasamplers else getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.config.epochs)  # type: ignore[union-attr]
        done = self._resume_measures(split)
        generator = getattr(loader, "generator", None)
        self._epoch_generator_state = generator.get_state() if generator is not None else None
        batches: Iterable = loader
        if done and isinstance(sampler, TrainingSampler):
            # A checkpoint taken at the pass's last batch has done it all, a short last batch included.
            sampler.skip(min(done * loader.batch_size, sampler.num_samples))  # type: ignore[operator]
        elif done:
            warn(f"resuming {split!r} by loading and discarding {done} batches: its sampler cannot skip", stacklevel=2)
            batches = itertools.islice(loader, done, None)
        try:
            length = done + len(loader)
            self._epoch_length = length
            log_interval = interval(self.config.log_interval)
            shown = length if self._step_evaluate_splits is None else min(length, done + self._iters_left())
            # Decided once per pass: a step that needs no scaler, clipping, EMA, autocast or accumulation window
            # (and whose parts are not overridden) runs the same operations without asking for each of them.
            train_step = self._plain_train_step if self.plain_steps() else self.train_step
            throughput = self._throughput = self.throughput_meter()
            count_tokens = self.count_tokens if type(self).count_tokens is not TrainingLoop.count_tokens else None
            if throughput is not None:
                throughput.start()
            for iteration, batch in enumerate(
                self._progress_bar(self._prefetched(batches, loader), split, total=shown, initial=done), start=done
            ):
                self._epoch_iteration = iteration
                steps = self.config.steps
                if throughput is not None:
                    throughput.arrived()
                train_step(batch)
                if throughput is not None:
                    throughput.done(batch_samples(batch), count_tokens(batch) if count_tokens is not None else None)
                if log_interval and (iteration == length - 1 or iteration % log_interval == 0):
                    self.step_log(split, iteration, length - 1)
                if self.config.steps != steps:
                    self._after_optimizer_step(split, iteration + 1)
                if self._reached_end():
                    break
                if throughput is not None:
                    throughput.asking()
        finally:
            last = self._epoch_iteration
            self._pass_position = (split, done if last is None else last + 1)
            self._epoch_iteration = self._epoch_length = self._throughput = None
            if isinstance(sampler, TrainingSampler):
                sampler.skip(0)
        return self.get_epoch_result()

    def _iters_left(self) -> int:
        """Micro-batches until `step_end`/`iter_end` (at most: a pass's end may close a window early)."""
        step_end, iter_end = self.config.step_end, self.config.iter_end
        left = [(step_end - self.config.steps) * self.config.accum_steps] if step_end else []
        if iter_end:
            left.append(iter_end - self.config.iters)
        return max(0, min(left)) if left else 0

    def _resume_measures(self, split: str) -> int:
        """Restore meters and metrics of an interrupted pass over `split`; return the batches it had done."""
        position, measures = self._resume_position, self._resume_state
        self._resume_position = self._resume_state = None
        measured, self._measured_split = self._measured_split, split
        if position is None or position.get("split") != split:
            # By steps, a pass continues the averages since the last evaluation (of the same split).
            if self._step_evaluate_splits is None or measured != split:
                self._reset_measures()
            return 0
        self._reset_measures()
        if measures:
            self.meters.load_state_dict(measures["meters"])
            metrics = self.current_metrics
            if metrics is not None and measures.get("metrics") is not None:
                metrics.load_state_dict(measures["metrics"])
        samples, world_size = position.get("samples"), self.world_size
        if samples is None:
            return int(position["batches"])
        batch_size = self.dataloaders[split].batch_size * world_size
        if samples % batch_size:
            raise ValueError(
                f"cannot resume {split!r} after {samples} samples with {world_size} process(es) of batch size "
                f"{batch_size // world_size}: it must be a multiple of {batch_size}"
            )
        return samples // batch_size

    def _after_optimizer_step(self, split: str, batches_done: int) -> None:
        """Evaluate every `eval_interval` steps (by steps), save `latest` every `checkpoint_interval` steps and after
        an evaluation, and stop cleanly if a preemption signal arrived."""
        if self._profiler is not None:
            self._profiler.step()
        period = interval(self.config.checkpoint_interval)
        periodic = bool(period and self.config.steps % period == 0 and self.config.save_checkpoints)
        evaluate = self._step_evaluate_splits is not None and self._step_evaluation_due()
        signum = self._agreed_preemption_signal()
        if not (periodic or evaluate) and signum is None:
            return
        if evaluate:
            self._record_step_result(split)
        if periodic or signum is not None or (evaluate and self.config.save_checkpoints):
            self._save_inside_pass(split, batches_done, evaluated=evaluate)
        if signum is not None:
            latest = f"latest{self.checkpoint_extension}"
            path = os.path.join(self.checkpoint_dir, latest) if self.is_main_process else None
            preempted = Preempted(signum, path)
            print(str(preempted))
            raise preempted

    def _save_inside_pass(self, split: str, batches_done: int, evaluated: bool = False) -> None:
        """Save `latest` with the position `batches_done` batches into `split`; after an evaluation, `best` too."""
        self._position = {
            "split": split,
            "batches": batches_done,
            # Samples of the epoch's order consumed by every process together: where the next one starts,
            # whatever the number of processes that resume it.
            "samples": batches_done * self.dataloaders[split].batch_size * self.world_size,
            "finished": _plain_results(self._epoch_result),
        }
        if evaluated:
            self._position["evaluated"] = True  # a scored checkpoint: it may become `best`
        try:
            # Every process reaches this step: the one place a mid-epoch snapshot can be gathered without a hang.
            self.collect_process_state()
            self.save_checkpoint(save_best=evaluated)
        finally:
            self._position = None
        if evaluated:
            self.write_run_state("running")

    def _agreed_preemption_signal(self) -> int | None:
        """The preemption signal to act on at this optimizer step, if any; called at every optimizer step.

        One process acts on its own flag at once. Several exchange their flags every half second or so without
        waiting, and act on what they received at the same step (see
        [`PreemptionAgreement`][danling.runner.preemption.PreemptionAgreement]): whatever `log_interval`, the
        save starts about a second after the signal, long before `torchrun` kills its workers.
        """
        watcher = self._preemption
        if watcher is None:
            return None
        if self._agreement is None:
            return watcher.received
        return self._agreement.poll(watcher.received)

    def _close_agreement(self, timeout: float | None = None) -> None:
        agreement, self._agreement = self._agreement, None
        if agreement is not None:
            agreement.close(timeout)

    def train_step(self, batch: Any) -> torch.Tensor:
        """Forward, loss and [`advance`][danling.TorchRunner.advance] on one micro-batch; returns the loss."""
        input, target = self.unpack_batch(batch)
        with self.accumulate():
            with self.autocast():
                pred = self.forward(self.model, input)
                loss = self.criterion(pred, target)  # type: ignore[misc]
            self.advance(loss)
        self._update_measures(pred, target, loss)
        return loss

    def throughput_meter(self) -> Throughput | None:
        """What measures a training pass's throughput for its log lines, or `None` when `config.throughput` is off."""
        if not self.config.get("throughput", True):
            return None
        return Throughput(self.config.get("flops_per_sample"), self.config.get("peak_flops"))

    def count_tokens(self, batch: Any) -> int | None:
        """The tokens in `batch`, for `tokens_per_s`: override it to count them (`None`, the default, counts none).

        It runs at every micro-batch: count without waiting for the device (for example from a CPU tensor of
        lengths, or `attention_mask.sum()` on a batch still on the CPU), so throughput stays free. On a GPU with
        `config.prefetch` on, the batch's tensors are already on the device: a count from them waits for it.
        """
        return None

    def plain_steps(self) -> bool:
        """Whether every step of the coming pass is plain: forward, loss, `backward()`, `optimizer.step()`.

        A backend that knows so says `True` (see `TorchRunner.plain_steps`); the loop then calls
        `_plain_train_step`, which does what `train_step` would do, in the same order, without asking at each step
        about a grad scaler, clipping, an EMA, autocast or an accumulation window.
        """
        return False

    def _plain_train_step(self, batch: Any) -> torch.Tensor:
        """`train_step` when `plain_steps()`: the same operations on the same values, decided once per pass."""
        input, target = self.unpack_batch(batch)
        pred = self.forward(self.model, input)
        loss = self.criterion(pred, target)  # type: ignore[misc]
        loss.backward()
        config, optimizer, scheduler = self.config, self.optimizer, self.scheduler
        config.increment("iters")
        optimizer.step()  # type: ignore[union-attr]
        optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        if scheduler is not None:
            scheduler.step()
        config.increment("steps")
        self._update_measures(pred, target, loss)
        return loss

    def advance(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward `loss` divided by its window's length; on the window's last micro-batch, step the optimizer.

        Windows hold `accum_steps` micro-batches, counted from the start of each epoch; the epoch's last window
        may be shorter, and its losses are divided by its own length, so every optimizer step follows the mean
        gradient over the samples of its window. Outside `train_epoch`, windows are counted on `iters`.
        """
        size, closes = self._accumulation_window()
        self.backward(self.scale_loss(loss, size))
        self.config.increment("iters")
        if closes:
            self.step()

    def scale_loss(self, loss: torch.Tensor, window: int) -> torch.Tensor:
        """`loss` as passed to `backward` in an accumulation window of `window` micro-batches: divided by it.

        A backend whose `backward` divides by a fixed `accum_steps` itself overrides this.
        """
        return loss / window if window > 1 else loss

    def _accumulation_window(self) -> tuple[int, bool]:
        """Length of the current micro-batch's window, and whether the micro-batch closes it."""
        accum_steps = self.config.accum_steps
        iteration, length = self._epoch_iteration, self._epoch_length
        if iteration is None or length is None:
            return accum_steps, (self.config.iters + 1) % accum_steps == 0
        start = iteration - iteration % accum_steps
        size = min(accum_steps, length - start)
        return size, iteration + 1 == start + size

    def step(self) -> None:
        """Clip gradients, step the optimizer (zeroing gradients), update the EMA, step the scheduler; `steps += 1`."""
        self.clip_gradients()
        self.optimizer_step()
        if self.ema is not None:
            self.update_ema()
        if self.scheduler is not None:
            self.scheduler.step()
        self.config.increment("steps")


def _plain_results(result: Mapping | None) -> dict[str, Any]:
    if not result:
        return {}
    return {split: value.dict() if hasattr(value, "dict") else dict(value) for split, value in result.items()}
