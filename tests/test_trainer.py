"""DistillTrainer end to end on tiny local models: learning, on/off-policy mixing, cache, guards, batches."""

from __future__ import annotations

import pytest
import torch

from distill.teacher import TeacherCache, build_teacher_cache
from distill.trainer import DistillConfig, DistillTrainer, LambdaSchedule, NonFiniteLossError
from distill.trainer.batch import BatchBuilder
from tests.helpers import cumsum_dataset, cumsum_rows, quick_sft, tiny_llama, weights


def _config(tmp_path, **overrides) -> DistillConfig:
    base = {"output_dir": str(tmp_path / "run"), "max_steps": 4, "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 16, "learning_rate": 3e-3, "logging_steps": 1, "report_to": [],
            "use_cpu": True, "save_strategy": "no", "max_new_tokens": 14, "seed": 0, "lr_scheduler_type": "constant",
            "disable_tqdm": True}
    return DistillConfig(**{**base, **overrides})


def _trainer(tmp_path, student_tok, teacher_tok, teacher=None, **overrides) -> DistillTrainer:
    teacher = teacher if teacher is not None else tiny_llama(teacher_tok, hidden=64, seed=1)
    return DistillTrainer(model=tiny_llama(student_tok), teacher_model=teacher, args=_config(tmp_path, **overrides),
                          train_dataset=cumsum_dataset(64), eval_dataset=cumsum_dataset(16, seed=9),
                          processing_class=student_tok, teacher_tokenizer=teacher_tok)


@pytest.fixture(scope="module")
def trained_teachers(tokenizer_pair):
    """A teacher per tokenizer that has learnt the task a little (so its top-1 tokens mean something)."""
    rows = cumsum_rows(256, seed=5)
    teachers = {}
    for tok in tokenizer_pair:
        model = tiny_llama(tok, hidden=64, seed=1)
        quick_sft(model, tok, rows, steps=120)
        teachers[id(tok)] = model
    return teachers


@pytest.mark.slow
@pytest.mark.parametrize(("method", "cross"), [("forward_kl", False), ("jsd", False), ("gold", True), ("uld", True)])
def test_distillation_loss_falls_and_agreement_rises(tmp_path, tokenizer_pair, trained_teachers, method, cross):
    student_tok, teacher_tok = tokenizer_pair
    teacher_tok = teacher_tok if cross else student_tok
    # gold with β = 0 (forward KL on the shared tokens, GOLD's recipe): JSD(0.5) saturates at ln 2 while the
    # distributions barely overlap, so its matched term moves slowly in a 24-step test
    trainer = _trainer(tmp_path, student_tok, teacher_tok, teacher=trained_teachers[id(teacher_tok)], method=method,
                       lmbda=0.5, max_steps=24, beta=0.0 if method == "gold" else 0.5)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < (0.85 if method == "uld" else 0.7) * before, (before, after)
    # agreement on the reference completions (off-policy steps: the same kind of text early and late)
    agreement = [h["top1_agreement"] for h in trainer.state.log_history
                 if "top1_agreement" in h and h.get("on_policy") == 0]
    if method != "uld":  # ULD matches distribution shapes, not token identities
        assert sum(agreement[-3:]) / 3 > agreement[0] + 0.05, agreement
    shares = [h["on_policy"] for h in trainer.state.log_history if "on_policy" in h]
    assert 0 < sum(shares) < len(shares)  # both kinds of batches happened


def test_lambda_schedules_and_synchronised_draws():
    constant = LambdaSchedule(0.5, "constant", seed=3)
    draws = [constant.on_policy(step, 0) for step in range(400)]
    assert 0.4 < sum(draws) / 400 < 0.6
    assert draws == [LambdaSchedule(0.5, seed=3).on_policy(step, 0) for step in range(400)]  # same on every rank
    assert not any(LambdaSchedule(0.0).on_policy(s, 0) for s in range(50))
    linear = LambdaSchedule(0.8, "linear", warmup_steps=10)
    assert [linear.value(s) for s in (0, 5, 10, 20)] == pytest.approx([0.0, 0.4, 0.8, 0.8])
    adaptive = LambdaSchedule(0.6, "adaptive", start=0.1, increment=0.2, patience=2)
    for loss in (1.0, 0.9, 0.95, 0.92):  # improves, then stalls twice
        adaptive.observe_eval_loss(loss)
    assert adaptive.value(0) == pytest.approx(0.3)
    for loss in (0.95, 0.95, 0.95, 0.95):
        adaptive.observe_eval_loss(loss)
    assert adaptive.value(0) == pytest.approx(0.6)  # capped at lmbda
    restored = LambdaSchedule(0.6, "adaptive")
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value(0) == adaptive.value(0)


def test_cross_tokenizer_batch_keeps_each_side_in_its_own_tokens(tokenizer_pair):
    student_tok, teacher_tok = tokenizer_pair
    builder = BatchBuilder(student_tok, teacher_tok, same_tokenizer=False, max_new_tokens=8)
    rows = cumsum_rows(3)
    batch = builder.build(rows)
    for b, row in enumerate(rows):
        for tok, side in ((student_tok, batch.student), (teacher_tok, batch.teacher)):
            completion = side.labels[b][side.labels[b] != -100].tolist()
            assert completion[-1] == tok.eos_token_id
            assert tok.decode(completion, skip_special_tokens=True).strip() == row["completion"].strip()
            prompt = side.input_ids[b, : side.prompt_lengths[b]].tolist()
            assert tok.decode(prompt, skip_special_tokens=True).strip() == row["prompt"].strip()
    # groups pair completion tokens only; the final group pairs the two EOS tokens
    for b in range(len(rows)):
        s_group, t_group = batch.alignment.student_group[b], batch.alignment.teacher_group[b]
        last = int(s_group.max())
        s_last = batch.student.targets[b][s_group == last].tolist()
        t_last = batch.teacher.targets[b][t_group == last].tolist()
        assert s_last == [student_tok.eos_token_id] and t_last == [teacher_tok.eos_token_id]


@pytest.mark.parametrize(("method", "cross"), [("jsd", False), ("gold", True)])
def test_logits_only_on_scored_positions_give_the_full_loss_and_gradient(tmp_path, tokenizer_pair, method, cross):
    """compute_loss asks both models for the logits of the last positions only (from the first completion
    position on); the loss and the student's gradient equal those from full logits."""
    from distill.trainer.objective import compute_objective

    student_tok, teacher_tok = tokenizer_pair
    teacher_tok = teacher_tok if cross else student_tok
    trainer = _trainer(tmp_path, student_tok, teacher_tok, method=method)
    student = trainer.model
    batch = trainer.builder.build(cumsum_rows(4, seed=3))
    keep = batch.student.scored_tail()
    assert keep < batch.student.input_ids.shape[1]  # prompts are cut: the check below compares something
    windowed = trainer.compute_loss(student, {"batch": batch})
    (windowed_grad,) = torch.autograd.grad(windowed, student.lm_head.weight)
    side = batch.teacher or batch.student
    with torch.no_grad():
        teacher_logits = trainer.teacher(input_ids=side.input_ids, attention_mask=side.attention_mask).logits
    logits = student(input_ids=batch.student.input_ids, attention_mask=batch.student.attention_mask).logits
    full = compute_objective(trainer.args, logits, batch, teacher_logits=teacher_logits,
                             vocab_map=trainer.vocab_map).loss
    (full_grad,) = torch.autograd.grad(full, student.lm_head.weight)
    torch.testing.assert_close(windowed, full)
    torch.testing.assert_close(windowed_grad, full_grad)


def test_gold_teacher_head_in_loss_order_gives_the_same_loss_and_gradient(tmp_path, tokenizer_pair):
    """GOLD scores with a copy of the teacher's head whose rows are in the loss's column order: same loss and
    student gradient as the head in id order, and the teacher keeps its own head outside the scoring forward."""
    student_tok, teacher_tok = tokenizer_pair
    losses_and_grads = []
    for in_order in (True, False):
        trainer = _trainer(tmp_path, student_tok, teacher_tok, method="gold", teacher_head_in_loss_order=in_order)
        head = trainer.teacher.get_output_embeddings()
        assert (trainer._teacher_head is not None) == in_order
        if in_order:  # a frozen copy with the teacher's dtype, not a view of (or a change to) the teacher's head
            permuted = trainer._teacher_head.weight
            assert not permuted.requires_grad and permuted.dtype == head.weight.dtype
            assert permuted.data_ptr() != head.weight.data_ptr()
            assert sorted(map(tuple, permuted.tolist())) == sorted(map(tuple, head.weight.tolist()))
        assert (trainer._loss_vocab_map.teacher_column is not None) == in_order
        batch = trainer.builder.build(cumsum_rows(4, seed=3))
        loss = trainer.compute_loss(trainer.model, {"batch": batch})
        assert trainer.teacher.get_output_embeddings() is head  # restored after the forward
        (grad,) = torch.autograd.grad(loss, trainer.model.lm_head.weight)
        losses_and_grads.append((loss, grad))
    (loss_a, grad_a), (loss_b, grad_b) = losses_and_grads
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(grad_a, grad_b)


def test_teacher_renders_chat_prompts_with_its_own_template(tokenizer_pair):
    student_tok, teacher_tok = tokenizer_pair
    teacher_tok = teacher_tok.__class__(tokenizer_object=teacher_tok.backend_tokenizer,
                                        eos_token=teacher_tok.eos_token, pad_token=teacher_tok.pad_token)
    teacher_tok.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|assistant|>"
    builder = BatchBuilder(student_tok, teacher_tok, same_tokenizer=False, max_new_tokens=8)
    row = {"id": "c", "prompt": "", "prompt_messages": [{"role": "user", "content": "hi there"}], "completion": " ok"}
    batch = builder.build([row])
    teacher_prompt = teacher_tok.decode(batch.teacher.input_ids[0, : batch.teacher.prompt_lengths[0]])
    student_prompt = student_tok.decode(batch.student.input_ids[0, : batch.student.prompt_lengths[0]],
                                        skip_special_tokens=True)
    assert teacher_prompt == "<|user|>hi there<|assistant|>"
    assert "<|" not in student_prompt and "hi there" in student_prompt


def test_offline_cache_with_full_k_trains_exactly_like_the_online_teacher(tmp_path, unigram_tokenizer):
    tok = unigram_tokenizer
    teacher = tiny_llama(tok, hidden=64, seed=1)
    data = cumsum_dataset(64)
    cache = build_teacher_cache(teacher, tok, data, tmp_path / "cache", k=len(tok), batch_size=16)
    results = []
    for cached in (False, True):
        trainer = DistillTrainer(
            model=tiny_llama(tok), teacher_model=None if cached else teacher,
            args=_config(tmp_path, method="forward_kl", lmbda=0.0, max_steps=2,
                         teacher_cache=str(cache) if cached else None),
            train_dataset=data, processing_class=tok,
        )
        trainer.train()
        results.append(weights(trainer.model))
    for name in results[0]:
        assert torch.allclose(results[0][name], results[1][name], atol=1e-5), name


def test_cache_checks_against_the_run(tmp_path, tokenizer_pair):
    student_tok, other_tok = tokenizer_pair
    cache = build_teacher_cache(tiny_llama(student_tok), student_tok, cumsum_dataset(8), tmp_path / "c", k=4,
                                temperature=2.0)
    with pytest.raises(ValueError, match="tokenizer differs"):
        TeacherCache.open(cache, other_tok)
    with pytest.raises(ValueError, match=r"temperature 2\.0 != the run's 1\.0"):
        TeacherCache.open(cache, student_tok, temperature=1.0)
    with pytest.raises(KeyError, match="not in the cache"):
        TeacherCache.open(cache, student_tok).row("missing-row")
    with pytest.raises(FileNotFoundError, match="manifest"):
        TeacherCache.open(tmp_path, student_tok)


def test_nan_guard_names_step_and_term_and_keeps_the_last_checkpoint(tmp_path, unigram_tokenizer):
    tok = unigram_tokenizer
    trainer = _trainer(tmp_path, tok, tok, method="forward_kl", lmbda=0.0, max_steps=6, save_strategy="steps",
                       save_steps=2)

    class Poison:  # after the checkpoint of step 2, the student's weights go bad
        def __getattr__(self, name):
            return lambda *args, **kwargs: None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                with torch.no_grad():
                    trainer.model.lm_head.weight.fill_(float("nan"))

    trainer.add_callback(Poison())
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss term 'forward_kl_loss' is nan"):
        trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").exists()
    assert not (tmp_path / "run" / "checkpoint-4").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "kl"}, "DistillConfig.method"),
        ({"lmbda": 1.5}, "DistillConfig.lmbda"),
        ({"merge": "mean"}, "DistillConfig.merge"),
        ({"gold_matched_weight": 1.0}, "gold_matched_weight"),
        ({"loss_temperature": 0.0}, "loss_temperature"),
    ],
)
def test_config_errors_name_the_field(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **overrides)


def test_trainer_refuses_impossible_setups(tmp_path, tokenizer_pair):
    student_tok, teacher_tok = tokenizer_pair
    with pytest.raises(ValueError, match="use 'uld' or 'gold'"):
        _trainer(tmp_path, student_tok, teacher_tok, method="forward_kl")
    with pytest.raises(ValueError, match="needs teacher_model"):
        DistillTrainer(model=tiny_llama(student_tok), teacher_model=None, args=_config(tmp_path, lmbda=0.5),
                       train_dataset=cumsum_dataset(8), processing_class=student_tok)
