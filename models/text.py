"""Text encoder: any Hugging Face encoder, pooled as the original (docs/ORIGINAL.md, 'Architecture') or by mean."""

import torch
from torch import nn

from .config import TextConfig


def build_text_model(cfg: TextConfig, hf_config=None) -> nn.Module:
    """The Hugging Face model for `cfg.model` (hub name or local folder).

    With cfg.pretrained its weights are loaded; otherwise it is randomly initialised from its config
    (`hf_config`, when given, avoids reading the config from the hub).
    """
    from transformers import AutoConfig, AutoModel

    if cfg.pretrained and hf_config is None:
        return AutoModel.from_pretrained(cfg.model)
    if hf_config is None:
        hf_config = AutoConfig.from_pretrained(cfg.model)
    return AutoModel.from_config(hf_config)


def hidden_size(text_model: nn.Module) -> int:
    c = text_model.config
    return c.hidden_size if hasattr(c, "hidden_size") else c.dim


def resolve_pooling(text_model: nn.Module, pooling: str) -> str:
    """ "auto" is the original's choice: the [CLS] hidden state for DistilBERT, the pooler for BERT."""
    if pooling != "auto":
        if pooling == "pooler" and getattr(text_model, "pooler", None) is None:
            raise ValueError(f"model.text.pooling: 'pooler' but {type(text_model).__name__} has no pooler")
        return pooling
    kind = text_model.config.model_type
    if kind == "distilbert":
        return "cls"
    if kind == "bert" and getattr(text_model, "pooler", None) is not None:
        return "pooler"
    raise ValueError(
        f"model.text.pooling: 'auto' knows DistilBERT (CLS) and BERT (pooler), not {kind!r}; "
        f"set it to 'cls' or 'mean' (mean suits sentence-transformers models)"
    )


def pool_text(
    text_model: nn.Module, pooling: str, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[B, L] token ids and mask -> [B, hidden] text feature (before the projection)."""
    out = text_model(input_ids=input_ids, attention_mask=attention_mask)
    if pooling == "pooler":
        return out.pooler_output
    hidden = out.last_hidden_state  # [B, L, hidden]
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
