"""Train a tiny saved student against a tiny saved teacher (used by tests in a fresh process).

usage: train_tiny.py WORKDIR OUTPUT_DIR [--kill-at STEP] [--resume] [--steps N] [--lmbda L] [--method M]
WORKDIR holds `student/`, `teacher/` (model + tokenizer folders) and `data/` (a `save_to_disk` dataset).
Runs under `torchrun` too: DDP on CPU with gloo.
"""

from __future__ import annotations

import argparse
import os
import signal

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from distill.trainer import DistillConfig, DistillTrainer


class KillAt(TrainerCallback):
    """SIGKILL this process at the end of a step: no cleanup, no final save — a machine lost mid-run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("output_dir")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--lmbda", type=float, default=0.5)
    parser.add_argument("--method", default="gold")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--save-steps", type=int, default=2)
    args = parser.parse_args()
    work = args.workdir
    student_tok = AutoTokenizer.from_pretrained(f"{work}/student")
    teacher_tok = AutoTokenizer.from_pretrained(f"{work}/teacher")
    config = DistillConfig(
        output_dir=args.output_dir, method=args.method, lmbda=args.lmbda, max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=3e-3, lr_scheduler_type="constant",
        save_strategy="steps", save_steps=args.save_steps, logging_steps=1, report_to=[], use_cpu=True, seed=0,
        max_new_tokens=10, disable_tqdm=True, ddp_backend="gloo" if "LOCAL_RANK" in os.environ else None,
        ddp_find_unused_parameters=False,
    )
    trainer = DistillTrainer(
        model=AutoModelForCausalLM.from_pretrained(f"{work}/student"),
        teacher_model=AutoModelForCausalLM.from_pretrained(f"{work}/teacher"),
        args=config, train_dataset=datasets.load_from_disk(f"{work}/data"),
        processing_class=student_tok, teacher_tokenizer=teacher_tok,
        callbacks=[KillAt(args.kill_at)] if args.kill_at else None,
    )
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    trainer.save_model(f"{args.output_dir}/final")


if __name__ == "__main__":
    main()
