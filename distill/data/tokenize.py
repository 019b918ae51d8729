"""Turning a (prompt, completion) example into token ids for one tokenizer.

The prompt and the completion are tokenised *separately* and their ids concatenated: tokenising the joined text
and masking "the prompt's length" is wrong whenever a token spans the boundary (a BPE merge of "\\n" with the
completion's first word, say). Generation starts from exactly the same prompt ids.

A prompt is either plain text or a list of chat messages (`[{"role": ..., "content": ...}]`); messages are
rendered with *this* tokenizer's chat template (so a teacher sees its own template, never the student's special
tokens), or joined as plain text when the tokenizer has no template.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """`input_ids` = prompt ids + completion ids (+ EOS); `labels` = -100 on the prompt, the ids elsewhere."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int


def render_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The prompt as this tokenizer's model expects it, ending where the completion starts."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant:"


def encode_prompt(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Prompt ids with the tokenizer's own special tokens (BOS where it adds one)."""
    text = render_prompt(tokenizer, prompt)
    templated = not isinstance(prompt, str) and getattr(tokenizer, "chat_template", None)
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def encode_completion(tokenizer, completion: str, add_eos: bool = True) -> list[int]:
    """Completion ids without BOS, followed by EOS when `add_eos`."""
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if add_eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def encode_example(tokenizer, prompt: str | list[dict], completion: str, add_eos: bool = True) -> Encoded:
    prompt_ids = encode_prompt(tokenizer, prompt)
    completion_ids = encode_completion(tokenizer, completion, add_eos)
    return Encoded(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids, len(prompt_ids))
