"""`DistillTrainer`: knowledge distillation on `transformers.Trainer`.

Each micro-batch of raw rows becomes a `DistillBatch` from one source — the reference completions
(off-policy), the student's own rollouts (on-policy, with probability λ from `LambdaSchedule`), or the teacher's
rollouts (`seq_kd`) — then the frozen teacher scores it (or an offline top-k cache does) and the configured
objective is applied. Everything else — optimiser, schedules, checkpoints and `resume_from_checkpoint`,
gradient accumulation, DDP/FSDP through accelerate, `report_to` — is `transformers.Trainer`'s.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import time
import zlib
from collections import defaultdict

import torch
from transformers import Trainer, TrainerCallback

from distill.align import VocabMap
from distill.cpu_memory import keep_freed_memory
from distill.teacher import TeacherCache
from distill.trainer.batch import BatchBuilder, DistillBatch
from distill.trainer.config import DistillConfig
from distill.trainer.objective import compute_objective
from distill.trainer.schedule import LambdaSchedule
from distill.trainer.teacher_head import loss_order_head, output_head

_SCHEDULE_FILE = "lmbda_schedule.json"


def same_tokenizer(a, b) -> bool:
    """Same vocabulary and the same special tokens (so ids mean the same thing on both sides)."""
    return a is b or (a.get_vocab() == b.get_vocab() and a.all_special_tokens == b.all_special_tokens)


@contextlib.contextmanager
def seeded_rng(key: str, device: torch.device):
    """Rollouts sample from an RNG seeded by (run seed, step, micro-batch), forked from the global stream: a resumed
    run samples exactly what the uninterrupted run sampled, and the training RNG is left untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(zlib.crc32(key.encode()))
        yield


def _logits_to_keep(model, positions: int) -> dict:
    """`logits_to_keep=positions` for models whose forward takes it (transformers' causal LMs: the LM head then
    runs on the last positions only), else nothing. Reads the class's signature: a wrapped instance method
    (a profiler's, a timer's) still passes the option on."""
    forward = type(getattr(model, "module", model)).forward
    return {"logits_to_keep": positions} if "logits_to_keep" in inspect.signature(forward).parameters else {}


def _last_positions(logits: torch.Tensor, keep: int) -> torch.Tensor:
    """`logits[:, -keep:]`, or `logits` itself when it holds just those positions: a full-range slice would still
    cost a zero-filled `[B, T, V]` gradient buffer and a copy in backward."""
    return logits if logits.shape[1] == keep else logits[:, -keep:]


class DistillTrainer(Trainer):
    """Distil `teacher_model` into `model`.

    Args:
        model: the student (a causal LM); `processing_class` is its tokenizer.
        teacher_model: the frozen teacher, or None with `args.teacher_cache` (off-policy only).
        teacher_tokenizer: the teacher's tokenizer (default: the student's).
        args: `DistillConfig`.
        train_dataset / eval_dataset: rows with `prompt`, `prompt_messages`, `completion` (and `id`).
    """

    def __init__(self, model=None, teacher_model=None, args: DistillConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, teacher_tokenizer=None, callbacks=None, **kwargs):
        if not isinstance(args, DistillConfig):
            raise TypeError("DistillTrainer needs args=DistillConfig(...)")
        if processing_class is None:
            raise ValueError("DistillTrainer needs processing_class= the student's tokenizer")
        teacher_tokenizer = teacher_tokenizer or processing_class
        self.same_tokenizer = same_tokenizer(processing_class, teacher_tokenizer)
        if not self.same_tokenizer and not args.cross_tokenizer_capable:
            raise ValueError(f"DistillConfig.method: {args.method!r} needs one tokenizer; teacher and student "
                             "tokenizers differ, use 'uld' or 'gold'")
        self.teacher_cache = TeacherCache.open(args.teacher_cache, processing_class) if args.teacher_cache else None
        if teacher_model is None and (self.teacher_cache is None or args.lmbda > 0 or args.seq_kd):
            raise ValueError("DistillTrainer: on-policy or seq_kd training (lmbda > 0 or seq_kd) needs teacher_model; "
                             "an offline teacher_cache covers off-policy data only")
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, data_collator=list, callbacks=callbacks, **kwargs)
        self.loss_is_scaled_for_ga = False  # our loss is a per-micro-batch mean: Trainer divides by GA steps
        if args.keep_freed_cpu_memory and self.args.device.type == "cpu":
            keep_freed_memory()
        self.teacher = teacher_model
        if self.teacher is not None:
            self.teacher.eval().requires_grad_(False)
            if next(self.teacher.parameters()).device != self.args.device:
                self.teacher.to(self.args.device)
        self.teacher_tokenizer = teacher_tokenizer
        self.vocab_map = VocabMap(processing_class, teacher_tokenizer) if args.method == "gold" else None
        # GOLD reads the teacher's logits in its own column order when the teacher's head can produce them so
        # (teacher_head.py); the map handed to the loss describes the logits the scoring forward returns
        self._teacher_head, self._loss_vocab_map = None, self.vocab_map
        if self.vocab_map is not None and self.teacher is not None and args.teacher_head_in_loss_order:
            reordered = loss_order_head(self.teacher, self.vocab_map)
            if reordered is not None:
                self._teacher_head, self._loss_vocab_map = reordered
        self.builder = BatchBuilder(processing_class, teacher_tokenizer, same_tokenizer=self.same_tokenizer,
                                    max_new_tokens=args.max_new_tokens, temperature=args.generation_temperature,
                                    top_p=args.top_p, top_k=args.top_k)
        self.schedule = LambdaSchedule(args.lmbda, args.lmbda_schedule, warmup_steps=args.lmbda_warmup_steps,
                                       start=args.lmbda_start, increment=args.lmbda_increment,
                                       patience=args.lmbda_patience, seed=args.seed)
        self._micro_index = 0
        self._logs: dict[str, list[float]] = defaultdict(list)
        self.add_callback(_ScheduleCallback(self))

    # --- one micro-batch -------------------------------------------------------------------------------------
    def _source(self) -> str:
        step = self.state.global_step
        index = self._micro_index
        self._micro_index += 1
        if self.schedule.on_policy(step, index):
            return "on_policy"
        return "seq_kd" if self.args.seq_kd else "off_policy"

    def training_step(self, model, inputs, num_items_in_batch=None):
        rows = inputs
        micro_index = self._micro_index
        source = self._source()
        start = time.perf_counter()
        if source == "off_policy":
            batch = self.builder.build(rows, source=source)
        else:
            with seeded_rng(f"{self.args.seed}:{self.state.global_step}:{micro_index}", self.args.device):
                batch = self.builder.build(rows, source=source, student_model=self.accelerator.unwrap_model(model),
                                           teacher_model=self.teacher)
        self._logs["rollout_seconds"].append(time.perf_counter() - start)
        self._logs["on_policy"].append(float(source == "on_policy"))
        self._step_start = start
        return super().training_step(model, {"batch": batch.to(self.args.device)}, None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        full: DistillBatch = inputs["batch"]
        # logits only where they are scored: from the first completion position on (prompts need none)
        s_keep = full.student.scored_tail()
        t_keep = full.teacher.scored_tail() if full.teacher is not None else s_keep
        batch = full.last(s_keep, t_keep)
        outputs = model(input_ids=full.student.input_ids, attention_mask=full.student.attention_mask,
                        use_cache=False, **_logits_to_keep(model, s_keep))
        teacher_logits, cached = None, None
        if self.teacher_cache is not None and batch.source == "off_policy":
            cached = self.teacher_cache.batch(batch.row_ids, batch.student.target_mask)
        else:
            teacher_side = full.teacher or full.student
            with torch.no_grad(), output_head(self.teacher, self._teacher_head):
                teacher_logits = self.teacher(input_ids=teacher_side.input_ids,
                                              attention_mask=teacher_side.attention_mask, use_cache=False,
                                              **_logits_to_keep(self.teacher, t_keep)).logits
            teacher_logits = _last_positions(teacher_logits, t_keep)  # a model that ignores the option returns all
        student_logits = _last_positions(outputs.logits, s_keep)
        out = compute_objective(self.args, student_logits, batch, teacher_logits=teacher_logits, cached=cached,
                                vocab_map=self._loss_vocab_map, step=self.state.global_step,
                                num_items=self._mean_units_per_process(batch) if model.training else None,
                                measure=not model.training or self._logging_step())
        if model.training:
            elapsed = max(time.perf_counter() - getattr(self, "_step_start", time.perf_counter()), 1e-9)
            self._logs["tokens_per_second"].append(batch.student.num_targets / elapsed)
            for name, value in out.terms.items():
                self._logs[f"{batch.source}/{name}"].append(value)
            if out.top1_agreement is not None:
                self._logs["top1_agreement"].append(out.top1_agreement)
            if out.topk_mass is not None:
                self._logs["teacher_topk_mass"].append(out.topk_mass)
            self._logs["lmbda"].append(self.schedule.value(self.state.global_step))
        return (out.loss, outputs) if return_outputs else out.loss

    def _logging_step(self) -> bool:
        """Whether the coming optimiser step is logged: logging-only numbers are computed on those steps only."""
        every = max(int(self.args.logging_steps), 1) if self.args.logging_strategy == "steps" else 1
        return (self.state.global_step + 1) % every == 0

    def _mean_units_per_process(self, batch: DistillBatch) -> float | None:
        """Under DDP, the loss sum is divided by the mean unit count per process: gradients averaged over processes
        are then the gradient of the mean over all units, exactly as one process with the whole batch. When no
        process has a scored unit (every rollout ended at once), every loss sum is 0 and so is the loss: the count
        is taken as at least 1 instead of dividing 0 by 0."""
        if self.args.world_size <= 1:
            return None
        units = torch.tensor(float(batch.num_units), device=self.args.device)
        return max(float(self.accelerator.reduce(units, reduction="sum")), 1.0) / self.args.world_size

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the distillation loss on the reference completions (off-policy, no generation)."""
        batch = self.builder.build(inputs, source="off_policy").to(self.args.device)
        with torch.no_grad():
            loss = self.compute_loss(model, {"batch": batch})
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: attach the means of what we collected since the last one
            logs.update({name: sum(values) / len(values) for name, values in self._logs.items() if values})
            self._logs.clear()
        super().log(logs, start_time)

    # --- λ schedule state travels with checkpoints --------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
        if os.path.isdir(folder) and self.args.should_save:
            with open(os.path.join(folder, _SCHEDULE_FILE), "w") as handle:
                json.dump(self.schedule.state_dict(), handle)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, _SCHEDULE_FILE)
        if os.path.exists(path):
            with open(path) as handle:
                self.schedule.load_state_dict(json.load(handle))


class _ScheduleCallback(TrainerCallback):
    """Feeds evaluation losses to the adaptive λ schedule and restarts the micro-batch count each step."""

    def __init__(self, trainer: DistillTrainer) -> None:
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._micro_index = 0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            self.trainer.schedule.observe_eval_loss(metrics["eval_loss"])
