"""Does distillation work? The demo teacher, and three students trained on the same data and step budget.

1. Teacher: `DEMO_CHAIN["teacher"]` with a byte-level BPE tokenizer, trained from scratch by SFT on the whole
   train split (timed; the bar is >= 0.95 exact match on the test split in <= 5 minutes on 2 CPU cores).
2. Students: `DEMO_CHAIN["student"]` (>= 8x fewer parameters) with a *different* tokenizer (SentencePiece-style
   Unigram), all on the same *transfer set* (the first `--transfer-rows` rows of the train split, 300 by
   default) for the same number of steps, batch and learning rate, by
   - `gold`, on-policy share lmbda 0 -> 0.5 (cross-tokenizer GOLD, student rollouts mixed in)
   - `gold`, lmbda=0                        (cross-tokenizer GOLD on the reference completions only)
   - plain SFT                               (cross-entropy on the reference completions)
3. Everything is evaluated on the test split: exact match overall and by answer length.

Why a transfer set smaller than the teacher's data: that is the distillation setting (a teacher trained on far
more than the prompts one distils on), and it is where a teacher adds what references cannot. On the whole
split all three students reach 1.000 with 2000 steps (`--transfer-rows 0`; bench/RESULTS.md): a teacher that is
right and sure of every token gives soft labels equal to the references. On 300 rows the references alone let a
student memorise; on-policy, the teacher grades the student's own sampled steps, states no reference contains.

Bars (issue #4): the gold student reaches >= 90% of the teacher's exact match; SFT scores lower; on-policy beats
off-policy on the longest answers. Prints a table and writes bench/out/quality.json.

Run: `python bench/quality.py` (about 30 minutes on 2 cores), `--quick` for a smoke run. Every student is trained
once per seed of `--seeds` (initial weights and data order; 0 1 2 by default) against the one teacher, and the
bars are judged on the means; `--runs on off sft` picks the students.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from distill.data.demo import DemoConfig, check_answer, make_demo_dataset
from distill.data.tokenizers import train_byte_level_bpe, train_metaspace_unigram
from distill.evaluation import evaluate_model
from distill.models import DEMO_CHAIN, build_model, count_parameters
from distill.sft import train_sft
from distill.trainer import DistillConfig, DistillTrainer

OUT = Path(__file__).parent / "out"
WEIGHT_DECAY = 0.1  # every run, teacher and students alike


#: the students: --runs key -> (name in the table, on-policy share lmbda; None for SFT)
RUNS = {"on": ("student gold on-policy", 0.5), "off": ("student gold off-policy", 0.0), "sft": ("student SFT", None)}


def distil(student, student_tok, teacher, teacher_tok, train, *, lmbda, steps, lr, batch, max_new_tokens, out,
           schedule="constant", gold_weights=None, seed=0):
    args = DistillConfig(output_dir=str(out), method="gold", lmbda=lmbda, beta=0.0, max_steps=steps,
                         lmbda_schedule=schedule if lmbda > 0 else "constant", lmbda_warmup_steps=steps // 2,
                         learning_rate=lr, weight_decay=WEIGHT_DECAY, per_device_train_batch_size=batch,
                         max_new_tokens=max_new_tokens,
                         lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20),
                         logging_steps=max(1, steps // 10), save_strategy="no", report_to=[], disable_tqdm=True,
                         seed=seed, **gold_weight_args(gold_weights))
    trainer = DistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train,
                             processing_class=student_tok, teacher_tokenizer=teacher_tok)
    trainer.train()
    return trainer.model


def gold_weight_args(weights: list[float] | None) -> dict:
    """DistillConfig arguments for fixed GOLD weights `[matched, unmatched]`, or none (adaptive weights)."""
    if not weights:
        return {}
    return {"gold_matched_weight": weights[0], "gold_unmatched_weight": weights[1]}


def longest_accuracy(metrics: dict, top: int = 3) -> float:
    """Accuracy on the `top` longest answer lengths, pooled."""
    by_length, counts = metrics["accuracy_by_length"], metrics["count_by_length"]
    lengths = sorted(by_length, key=int)[-top:]
    total = sum(counts[k] for k in lengths)
    return sum(by_length[k] * counts[k] for k in lengths) / max(total, 1)


def seed_suffix(seed: int, seeds: list[int]) -> str:
    return f" seed {seed}" if len(seeds) > 1 else ""


def mean_scores(rows: list[dict]) -> tuple[float, float]:
    """Mean exact match and mean accuracy on the longest answers over seeds."""
    return (sum(r["exact_match"] for r in rows) / len(rows), sum(longest_accuracy(r) for r in rows) / len(rows))


def verdicts(means: dict[str, tuple[float, float]], teacher_em: float) -> list[str]:
    """Issue #4's student bars, judged on the seed means of the students that were trained."""
    lines = []
    if "on" in means:
        share = means["on"][0] / max(teacher_em, 1e-9)
        lines.append(f"gold (on-policy) reaches {share:.0%} of the teacher's exact match (bar: >= 90%): "
                     f"{'met' if share >= 0.9 else 'NOT met'}")
    if "on" in means and "sft" in means:
        lines.append(f"SFT {means['sft'][0]:.3f} vs gold {means['on'][0]:.3f} exact match (bar: SFT lower): "
                     f"{'met' if means['sft'][0] < means['on'][0] else 'NOT met'}")
    if "on" in means and "off" in means:
        lines.append(f"on the longest answers, on-policy {means['on'][1]:.3f} vs off-policy {means['off'][1]:.3f} "
                     f"(bar: on-policy higher): {'met' if means['on'][1] > means['off'][1] else 'NOT met'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher-steps", type=int, default=1400)
    parser.add_argument("--student-steps", type=int, default=1000)
    parser.add_argument("--transfer-rows", type=int, default=300,
                        help="the students' transfer set: the first N train rows (0: the whole train split)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--test-limit", type=int, default=400)
    parser.add_argument("--schedule", default="linear", choices=["constant", "linear"],
                        help="lambda schedule of the on-policy student (linear: 0 -> lmbda over half the steps)")
    parser.add_argument("--gold-weights", type=float, nargs=2, metavar=("MATCHED", "UNMATCHED"),
                        help="fixed GOLD weights for both gold students (default: adaptive)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="student seeds (initial weights and data order); the teacher is trained once")
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=sorted(RUNS),
                        help="which students to train")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    demo = DemoConfig()
    if args.quick:
        demo = DemoConfig(train_size=200, validation_size=20, test_size=40, max_length=4)
        args.teacher_steps, args.student_steps, args.test_limit, args.transfer_rows = 30, 10, 40, 50
    torch.manual_seed(0)
    data = make_demo_dataset(demo)
    if args.transfer_rows < 0 or args.transfer_rows > len(data["train"]):
        parser.error(f"--transfer-rows must be in [0, {len(data['train'])}], got {args.transfer_rows}")
    transfer = data["train"].select(range(args.transfer_rows)) if args.transfer_rows else data["train"]
    print(f"students learn from {len(transfer)} of the {len(data['train'])} train rows; on-policy: lmbda "
          f"{'0 -> 0.5 (linear, first half of the steps)' if args.schedule == 'linear' else '0.5'}, off-policy: 0",
          flush=True)
    texts = [r["prompt"] + r["completion"] for r in data["train"]]
    bpe, unigram = train_byte_level_bpe(texts, 600), train_metaspace_unigram(texts, 600)
    max_new = 13 * demo.max_length + 8  # 12 tokens a step at most, the counter, EOS
    evaluate = {"check": check_answer, "max_new_tokens": max_new, "batch_size": 100, "limit": args.test_limit}
    results: dict[str, dict] = {}

    teacher = build_model(DEMO_CHAIN["teacher"], bpe, seed=0)
    start = time.perf_counter()
    train_sft(teacher, bpe, data["train"], output_dir=str(OUT / "quality-teacher"), max_steps=args.teacher_steps,
              learning_rate=args.lr, batch_size=args.batch, weight_decay=WEIGHT_DECAY,
              logging_steps=max(1, args.teacher_steps // 10))
    teacher_seconds = time.perf_counter() - start
    results["teacher"] = evaluate_model(teacher, bpe, data["test"], **evaluate)
    results["teacher"]["train_seconds"] = teacher_seconds
    print(f"teacher: {count_parameters(teacher):,} params, {teacher_seconds:.0f}s of SFT, "
          f"exact match {results['teacher']['exact_match']:.3f}", flush=True)

    common = {"steps": args.student_steps, "lr": args.lr, "batch": args.batch, "max_new_tokens": max_new,
              "schedule": args.schedule, "gold_weights": args.gold_weights}

    def train(run: str, student, seed: int):
        if run == "sft":
            train_sft(student, unigram, transfer, output_dir=str(OUT / "q-sft"), max_steps=args.student_steps,
                      learning_rate=args.lr, batch_size=args.batch, weight_decay=WEIGHT_DECAY, seed=seed)
            return student
        return distil(student, unigram, teacher, bpe, transfer, lmbda=RUNS[run][1], out=OUT / f"q-{run}", seed=seed,
                      **common)

    for run in args.runs:
        for seed in args.seeds:
            name = RUNS[run][0] + seed_suffix(seed, args.seeds)
            student = build_model(DEMO_CHAIN["student"], unigram, seed=seed)
            start = time.perf_counter()
            student = train(run, student, seed)
            results[name] = evaluate_model(student, unigram, data["test"], teacher=teacher, teacher_tokenizer=bpe,
                                           **evaluate)
            results[name]["train_seconds"] = time.perf_counter() - start
            results[name]["parameters"] = count_parameters(student)
            print(f"{name}: exact match {results[name]['exact_match']:.3f}, on the longest answers "
                  f"{longest_accuracy(results[name]):.3f} ({results[name]['train_seconds']:.0f}s)", flush=True)

    teacher_em = results["teacher"]["exact_match"]
    print(f"\n{'model':30s} {'params':>9s} {'train s':>8s} {'EM':>6s} {'EM/teacher':>10s} {'EM longest':>10s}")
    for name, r in results.items():
        params = r.get("parameters") or r["num_parameters"]
        print(f"{name:30s} {params:>9,} {r['train_seconds']:>8.0f} {r['exact_match']:>6.3f} "
              f"{r['exact_match'] / max(teacher_em, 1e-9):>10.2f} {longest_accuracy(r):>10.3f}")
    lengths = sorted(results["teacher"]["accuracy_by_length"], key=int)
    print("\naccuracy by answer length:", " ".join(lengths))
    for name, r in results.items():
        print(f"{name:30s}", " ".join(f"{r['accuracy_by_length'][k]:.2f}" for k in lengths))
    means = {run: mean_scores([results[f"{RUNS[run][0]}{seed_suffix(seed, args.seeds)}"] for seed in args.seeds])
             for run in args.runs}
    print(f"\nmean over seeds {args.seeds}:")
    for run, (em, longest) in means.items():
        print(f"{RUNS[run][0]:30s} EM {em:.3f}, on the longest answers {longest:.3f}")
    judged = verdicts(means, teacher_em)
    print("\n".join(judged))
    OUT.mkdir(exist_ok=True)
    summary = {"transfer_rows": len(transfer), "student_steps": args.student_steps, "seeds": args.seeds,
               "means": {RUNS[run][0]: {"exact_match": em, "longest": longest} for run, (em, longest) in means.items()},
               "verdicts": judged}
    (OUT / "quality.json").write_text(json.dumps({"summary": summary, "models": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
