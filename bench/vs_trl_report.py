"""Measuring and reporting for bench/vs_trl.py: per-step and per-phase clocks, then the printed tables, tokens/s,
and the ratios against TRL and against the floor."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
from transformers import TrainerCallback


class Clock:
    """Per-step wall times (and CPU times of this process) of the training loop and of the phases inside it."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.phases: dict[str, float] = defaultdict(float)
        self.info: dict = {}
        self.steps: list[dict] = []
        self.last: tuple[float, float] | None = None

    def now(self) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def wrap(self, name: str, fn, grad_only: bool = False):
        def timed(*args, **kwargs):
            if grad_only and not torch.is_grad_enabled():
                return fn(*args, **kwargs)
            wall, cpu = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                wall_end, cpu_end = self.now()
                self.phases[name] += wall_end - wall
                self.phases["cpu:" + name] += cpu_end - cpu

        return timed

    def start(self) -> None:
        self.last = self.now()

    def step_end(self) -> None:
        now = self.now()
        self.steps.append({"time": now[0] - self.last[0], "cpu:time": now[1] - self.last[1], **self.phases,
                           **self.info})
        self.phases.clear()
        self.info = {}
        self.last = now


class StepTimer(TrainerCallback):
    def __init__(self, clock: Clock):
        self.clock = clock

    def on_train_begin(self, args, state, control, **kwargs):
        self.clock.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.step_end()


def instrument(trainer, clock: Clock, student, teacher) -> None:
    """Time student generate / forward (with grad) and teacher forward, and record rollout shapes."""
    generate = student.generate

    def recorded_generate(*args, **kwargs):
        out = generate(*args, **kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        sequences = out.sequences if hasattr(out, "sequences") else out
        clock.info["gen_prompt_shape"] = tuple(ids.shape)
        clock.info["gen_new_tokens"] = int(sequences.shape[1] - ids.shape[1])
        return out

    student.generate = clock.wrap("generate", recorded_generate)
    student.forward = clock.wrap("student_fwd", student.forward, grad_only=True)
    teacher.forward = clock.wrap("teacher_fwd", teacher.forward)
    trainer.add_callback(StepTimer(clock))


PHASES = (
    ("generate", "student rollout (generate)"),
    ("prepare-", "batch prep: tokenise/align/offsets"),
    ("student_fwd", "student forward"),
    ("teacher_fwd", "teacher forward"),
    ("loss", "loss (+ TRL: teacher tokenisation)"),
    ("backward", "backward"),
    ("other", "optimiser, data, loop"),
)


def phase_means(steps: list[dict], prefix: str) -> dict[str, float]:
    def mean(key):
        return sum(st.get(prefix + key, 0.0) for st in steps) / len(steps)

    out = {"generate": mean("generate"), "student_fwd": mean("student_fwd"), "teacher_fwd": mean("teacher_fwd")}
    out["prepare-"] = mean("prepare") - out["generate"]
    out["loss"] = mean("compute_loss") - out["student_fwd"] - out["teacher_fwd"]
    out["backward"] = mean("training_step") - mean("prepare") - mean("compute_loss")
    out["other"] = mean("time") - mean("training_step")
    out["total"] = mean("time")
    return out


def mean_of(steps: list[dict], key: str, on_policy: bool | None = None) -> float:
    values = [st.get(key, 0.0) for st in steps if on_policy is None or st["on_policy"] == on_policy]
    return statistics.mean(values) if values else float("nan")


def rate(steps: list[dict], key: str = "time") -> float:
    """Student completion tokens per second (wall: key "time"; CPU of this process: "cpu:time")."""
    return sum(st["tokens"] for st in steps) / sum(st[key] for st in steps)


def report(runs: dict[str, list[list[dict]]], floors: list[tuple[list[dict], dict]]) -> None:
    label = {"ours": "ours (DistillTrainer)", "trl": "TRL (GOLDTrainer)"}
    timed = {name: [st for steps in per_repeat for st in steps] for name, per_repeat in runs.items()}
    repeats = len(next(iter(runs.values())))
    print()
    print(f"all timed steps of {repeats} repeat(s):")
    print("| trainer               | s/step | on-policy s/step | off-policy s/step | tokens/step on / off | tokens/s "
          "| CPU s/step | tokens/CPU-s |")
    print("|-----------------------|-------:|-----------------:|------------------:|---------------------:|---------:"
          "|-----------:|-------------:|")
    for name, steps in timed.items():
        print(f"| {label[name]:<21} | {mean_of(steps, 'time'):6.2f} | {mean_of(steps, 'time', True):16.2f} | "
              f"{mean_of(steps, 'time', False):17.2f} | "
              f"{mean_of(steps, 'tokens', True):9.1f} / {mean_of(steps, 'tokens', False):8.1f} | "
              f"{rate(steps):8.1f} | {mean_of(steps, 'cpu:time'):10.2f} | {rate(steps, 'cpu:time'):12.1f} |")

    print()
    print("time per step by phase, mean over the timed steps (wall s / CPU s of this process):")
    means = {name: (phase_means(steps, ""), phase_means(steps, "cpu:")) for name, steps in timed.items()}
    print(f"| {'phase':<36} |" + "".join(f" {label[n]:>21} |" for n in means))
    print(f"|{'-' * 38}|" + "".join(f"{'-' * 22}:|" for _ in means))
    for key, text in (*PHASES, ("total", "total")):
        print(f"| {text:<36} |" + "".join(f" {wall[key]:9.3f} / {cpu[key]:9.3f} |" for wall, cpu in means.values()))

    both = "ours" in runs and "trl" in runs
    print()
    for r in range(repeats):
        parts = [f"repeat {r + 1}:"]
        if both:
            ours, trl = runs["ours"][r], runs["trl"][r]
            parts.append(f"ours/TRL tokens/s {rate(ours) / rate(trl):.2f} wall, "
                         f"{rate(ours, 'cpu:time') / rate(trl, 'cpu:time'):.2f} CPU;")
        if floors:
            ours, floor = runs["ours"][r], floors[r][0]
            parts.append(f"ours/floor {mean_of(ours, 'time') / mean_of(floor, 'time'):.2f} wall, "
                         f"{mean_of(ours, 'cpu:time') / mean_of(floor, 'cpu:time'):.2f} CPU")
        print(" ".join(parts))

    if floors:
        steps = timed["ours"]
        floor = [st for f, _ in floors for st in f]
        opt = floors[-1][1]
        on_steps = sum(st["on_policy"] for st in runs["ours"][0])
        generated = sum(st.get("gen_new_tokens", 0) * st.get("gen_prompt_shape", (0,))[0] for st in runs["ours"][0])
        trained = sum(st["tokens"] for st in runs["ours"][0])
        print(f"floor = student fwd+bwd + teacher fwd on our batch shapes (logits on the scored tail) + generate on "
              f"the {on_steps} on-policy steps "
              f"({generated} tokens generated of {trained} trained per repeat): {mean_of(floor, 'time'):.3f} s/step "
              f"wall, {mean_of(floor, 'cpu:time'):.3f} s/step CPU; one AdamW step on the student (not in the floor): "
              f"{opt['time']:.3f} s wall")
        print(f"(CPU time: ours / floor = {mean_of(steps, 'cpu:time') / mean_of(floor, 'cpu:time'):.2f})")
        print(f"ours step time / floor = {mean_of(steps, 'time') / mean_of(floor, 'time'):.2f}")
    if both:
        print(f"(CPU time: ours/TRL tokens per CPU-second = "
              f"{rate(timed['ours'], 'cpu:time') / rate(timed['trl'], 'cpu:time'):.2f})")
        print(f"ratio ours/TRL = {rate(timed['ours']) / rate(timed['trl']):.2f}")
