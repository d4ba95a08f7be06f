"""Caption tokenization, once per batch, with a Hugging Face tokenizer (hub name or local folder)."""

import functools

import torch


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str):
    """Load once per process (each DataLoader worker keeps its own): a hub name or a local folder."""
    from transformers import AutoTokenizer  # heavy import; only processes that tokenize pay it

    return AutoTokenizer.from_pretrained(name_or_path)


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Pad to the longest caption of the batch, truncate at max_length: input_ids and attention_mask [B, L]."""
    out = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
