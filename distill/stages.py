"""The pipeline's stages as plain functions of `PipelineParams`: prepare → teacher → distill (each hop) →
evaluate (each model) → gate. `distill stage <name>` calls them; `dvc.yaml` declares their inputs and outputs;
the Prefect flow runs them through DVC. Outputs are written atomically (a folder appears complete or not at all).

Layout under `params.artifacts`:
    data/                 the prepared DatasetDict (+ README.md card)
    tokenizers/<name>/    tokenizers trained on the data (demo)
    models/<name>/        HF model folders (safetensors + tokenizer)
    checkpoints/<name>/   Trainer checkpoints of a distillation hop: scratch space a killed run resumes from, stamped
                          with the hop's fingerprint (stale ones are discarded) and removed when the hop finishes
    metrics/<stage>.json  what each training stage measured
    eval/<model>.json     evaluation of each model
    report/               summary.json, gate.json, accuracy_by_length.png
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import datasets
import torch

from distill.config import PipelineParams
from distill.data.demo import check_answer, dataset_card, make_demo_dataset, save_dataset
from distill.data.load import load_user_dataset, user_dataset_card
from distill.data.tokenizers import save_tokenizer, train_byte_level_bpe, train_metaspace_unigram
from distill.evaluation import evaluate_model, plot_accuracy_by_length, write_report
from distill.io import atomic_directory, write_json
from distill.launch import ddp_arguments, rank
from distill.models import build_model, count_parameters, load_model, load_tokenizer, save_model
from distill.sft import train_sft

TRAINERS = {"byte_level_bpe": train_byte_level_bpe, "metaspace_unigram": train_metaspace_unigram}


class GateFailed(RuntimeError):
    """A promotion gate failed: the message names each failing metric, its value and the threshold."""


# --- prepare -----------------------------------------------------------------------------------------------------
def prepare(params: PipelineParams) -> dict:
    if params.data.source == "demo":
        data = make_demo_dataset(params.data.demo)
        card = dataset_card(params.data.demo, data)
    else:
        data = load_user_dataset(params.data.source, max_chars=params.data.max_chars, seed=params.data.seed)
        card = user_dataset_card(params.data.source, data)
    save_dataset(data, params.path("data"), card)
    texts = [r["prompt"] + r["completion"] for r in data["train"]]
    sizes = {}
    for name, spec in params.tokenizers.items():
        tokenizer = TRAINERS[spec.kind](texts, spec.vocab_size)
        with atomic_directory(params.path("tokenizers", name)) as folder:
            save_tokenizer(tokenizer, folder)
        sizes[name] = len(tokenizer)
    metrics = {"rows": {split: len(data[split]) for split in data}, "tokenizer_sizes": sizes}
    write_json(params.path("metrics", "prepare.json"), metrics)
    return metrics


def load_data(params: PipelineParams) -> datasets.DatasetDict:
    """The prepared data, in memory: `map` must not write cache files into a versioned output folder."""
    return datasets.load_from_disk(str(params.path("data")), keep_in_memory=True)


def model_tokenizer(params: PipelineParams, name: str):
    model = params.models[name]
    if model.pretrained is not None:
        return load_tokenizer(model.pretrained)
    return load_tokenizer(params.path("tokenizers", model.tokenizer))


def initial_model(params: PipelineParams, name: str):
    """A model of the chain before training: the pretrained one, or one built from its spec (seeded)."""
    spec = params.models[name]
    if spec.pretrained is not None:
        return load_model(spec.pretrained, dtype=spec.dtype)
    tokenizer = model_tokenizer(params, name)
    return build_model(spec.spec, tokenizer, seed=0), tokenizer


# --- teacher -----------------------------------------------------------------------------------------------------
def teacher(params: PipelineParams) -> dict:
    """Train the demo teacher by SFT (prompt masked), or take a given pretrained one as it is."""
    model, tokenizer = initial_model(params, "teacher")
    metrics: dict = {"parameters": count_parameters(model)}
    if params.models["teacher"].pretrained is None:
        data = load_data(params)
        sft = params.teacher_training
        start = time.perf_counter()
        result = train_sft(model, tokenizer, data["train"], output_dir=str(params.path("checkpoints", "teacher")),
                           max_steps=sft.max_steps, learning_rate=sft.learning_rate, batch_size=sft.batch_size,
                           weight_decay=sft.weight_decay, eval_dataset=data["validation"], seed=sft.seed,
                           logging_steps=max(sft.max_steps // 20, 1), **ddp_arguments())
        metrics.update({k: v for k, v in result.items() if k != "log_history"})
        metrics["train_seconds"] = time.perf_counter() - start
    if rank() == 0:  # under torchrun (teacher_training.nproc_per_node > 1) every worker gets here
        save_model(model, tokenizer, params.path("models", "teacher"))
        write_json(params.path("metrics", "teacher.json"), metrics)
    return metrics


# --- distill -----------------------------------------------------------------------------------------------------
def distill(params: PipelineParams, student_name: str) -> dict:
    """One hop: distil `models/<hop.teacher>` into the hop's student; resumes from its checkpoints if killed."""
    from distill.trainer import DistillConfig, DistillTrainer  # heavy import, only for this stage

    hop = params.hop(student_name)
    data = load_data(params)
    teacher_model, teacher_tok = load_model(params.path("models", hop.teacher))
    student_model, student_tok = initial_model(params, student_name)
    checkpoints = params.path("checkpoints", student_name)
    config = DistillConfig(
        output_dir=str(checkpoints), method=hop.method, lmbda=hop.lmbda, lmbda_schedule=hop.lmbda_schedule,
        lmbda_warmup_steps=hop.lmbda_warmup_steps, beta=hop.beta, loss_temperature=hop.loss_temperature,
        sft_weight=hop.sft_weight, max_steps=hop.max_steps, learning_rate=hop.learning_rate,
        weight_decay=hop.weight_decay,
        per_device_train_batch_size=hop.batch_size, per_device_eval_batch_size=hop.batch_size,
        max_new_tokens=hop.max_new_tokens, seed=hop.seed, report_to=[], save_strategy="steps",
        save_steps=max(hop.max_steps // 4, 1), save_total_limit=2, logging_steps=max(hop.max_steps // 20, 1),
        lr_scheduler_type="cosine", warmup_steps=max(1, hop.max_steps // 20), disable_tqdm=True,
        **ddp_arguments(),
    )
    trainer = DistillTrainer(model=student_model, teacher_model=teacher_model, args=config,
                             train_dataset=data["train"], eval_dataset=data["validation"],
                             processing_class=student_tok, teacher_tokenizer=teacher_tok)
    fingerprint = {"hop": hop.model_dump(), "student": params.models[student_name].model_dump(mode="json"),
                   "inputs": tree_digest(params.path("models", hop.teacher), params.path("data"))}
    resume = resumable_checkpoints(checkpoints, fingerprint)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - start
    history = trainer.state.log_history
    metrics = {"hop": f"{hop.teacher}->{student_name}", "method": hop.method, "lmbda": hop.lmbda,
               "resumed": resume, "train_seconds": seconds, "parameters": count_parameters(trainer.model),
               "processes": trainer.args.world_size,
               "final_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
               "eval_loss": trainer.evaluate().get("eval_loss")}  # every process takes part in evaluate()
    if trainer.is_world_process_zero():
        save_model(trainer.model, student_tok, params.path("models", student_name))
        write_json(params.path("metrics", f"distill-{student_name}.json"), metrics)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the model is saved: nothing left to resume
    return metrics


def tree_digest(*roots: Path) -> str:
    """sha256 over the relative paths and bytes of every file under `roots` (streamed, 1 MiB at a time)."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def resumable_checkpoints(checkpoints: Path, fingerprint: dict) -> bool:
    """True when `checkpoints` holds checkpoints of this very hop (same params, student spec, teacher, data).

    Checkpoints of anything else (the params or the teacher changed since a run was killed) are discarded, so a
    changed hop never resumes from a stale run. The fingerprint is stamped into `fingerprint.json`.
    """
    stamp = checkpoints / "fingerprint.json"
    if rank() == 0:
        if checkpoints.exists() and (not stamp.exists() or json.loads(stamp.read_text()) != fingerprint):
            shutil.rmtree(checkpoints)
        checkpoints.mkdir(parents=True, exist_ok=True)
        write_json(stamp, fingerprint)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # the other ranks look only after rank 0 has cleaned up
    return any(checkpoints.glob("checkpoint-*"))


# --- evaluate ----------------------------------------------------------------------------------------------------
def answer_checker(params: PipelineParams, data: datasets.Dataset):
    """The task's verifier: the demo's program check, or exact match with the reference for user data."""
    if params.data.source == "demo":
        return check_answer
    references = {row["prompt"]: row["completion"].strip() for row in data}
    return lambda prompt, completion: completion.strip() == references.get(prompt)


def evaluate(params: PipelineParams, name: str) -> dict:
    test = load_data(params)["test"]
    model, tokenizer = load_model(params.path("models", name))
    teacher_model = teacher_tok = None
    if name != "teacher":
        teacher_model, teacher_tok = load_model(params.path("models", "teacher"))
    ev = params.evaluation
    metrics = evaluate_model(model, tokenizer, test, check=answer_checker(params, test), teacher=teacher_model,
                             teacher_tokenizer=teacher_tok, max_new_tokens=ev.max_new_tokens,
                             batch_size=ev.batch_size, limit=ev.limit, model_dir=params.path("models", name))
    metrics["model"] = name
    write_report(metrics, params.path("eval", f"{name}.json"))
    return metrics


# --- gate --------------------------------------------------------------------------------------------------------
def summary(params: PipelineParams) -> dict[str, dict]:
    results = {}
    for name in params.model_order:
        path = params.path("eval", f"{name}.json")
        if path.exists():
            results[name] = json.loads(path.read_text())
    return results


def gate(params: PipelineParams) -> dict:
    """Check the final student against the gates; write report/; raise `GateFailed` naming what failed."""
    results = summary(params)
    student, teacher_eval = results.get(params.student), results.get("teacher")
    if student is None or teacher_eval is None:
        raise FileNotFoundError(f"gate: evaluations of 'teacher' and {params.student!r} are needed in "
                                f"{params.path('eval')}")
    g = params.gates
    drop = teacher_eval["exact_match"] - student["exact_match"]
    speedup = student["tokens_per_second"] / max(teacher_eval["tokens_per_second"], 1e-9)
    checks = [
        ("student exact_match", student["exact_match"], ">=", g.min_student_accuracy),
        ("accuracy drop vs teacher", drop, "<=", g.max_accuracy_drop),
        ("generation speed-up vs teacher", speedup, ">=", g.min_speedup),
        ("student parameters", student["num_parameters"], "<=", g.max_student_parameters),
    ]
    verdicts = []
    for metric, value, op, threshold in checks:
        if threshold is None:
            continue
        ok = value >= threshold if op == ">=" else value <= threshold
        verdicts.append({"metric": metric, "value": value, "op": op, "threshold": threshold, "passed": ok})
    table = {name: {k: r.get(k) for k in ("exact_match", "perplexity", "num_parameters", "size_on_disk_bytes",
                                          "tokens_per_second", "teacher_kl", "teacher_top1_agreement")}
             for name, r in results.items()}
    report = {"student": params.student, "passed": all(v["passed"] for v in verdicts), "gates": verdicts,
              "models": table}
    write_json(params.path("report", "summary.json"), table)
    write_json(params.path("report", "gate.json"), report)
    plot_accuracy_by_length(results, params.path("report", "accuracy_by_length.png"))
    failed = [v for v in verdicts if not v["passed"]]
    if failed:
        raise GateFailed("; ".join(f"gate failed: {v['metric']} = {v['value']:.4g}, required {v['op']} "
                                   f"{v['threshold']}" for v in failed))
    return report
