"""FAISS indexes over L2-normalised embeddings (inner product = cosine similarity).

Small collections get an exact index (`flat`). Large ones get an inverted file (`ivf`: IVF + flat
storage, or `ivfpq`: IVF + product quantisation when memory matters) whose coarse quantiser is trained
on the collection's own features. The original's `create_faiss_index.py` trained its quantiser on
`np.random.rand(50000, 256)` (docs/ORIGINAL.md, 'Search index'): uniform noise in the positive orthant has nothing to do
with where real embeddings live, so most lists stayed empty and recall collapsed. We fix that on purpose.

On disk an index is two files in one folder: `index.faiss` and `index.json` (kind, sizes, search
settings), both written atomically.
"""

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from foundation.fsutil import atomic_path, atomic_write_json
from pipeline.search.collection import Collection

log = logging.getLogger(__name__)
# faiss logs every failed attempt to load its AVX512/AVX2 builds at INFO; keep our logs readable
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"
KINDS = ("auto", "flat", "ivf", "ivfpq")
# Up to this many vectors an exact scan answers a query in a few milliseconds (docs/bench/search.md),
# so approximate search would only cost recall.
EXACT_MAX_DEFAULT = 100_000
# faiss warns below 39 training points per list; 64 gives stable centroids without training on everything.
TRAIN_POINTS_PER_LIST = 64


class IndexMissingError(FileNotFoundError):
    """The index folder does not hold a built index."""


@dataclass
class IndexInfo:
    kind: str  # flat | ivf | ivfpq
    dim: int
    count: int
    nlist: int = 0  # inverted lists (ivf*)
    nprobe: int = 0  # lists visited per query (ivf*)
    pq_m: int = 0  # sub-quantisers (ivfpq)
    train_size: int = 0  # real feature vectors the quantiser was trained on
    build_seconds: float = 0.0


def normalize(vectors: np.ndarray) -> np.ndarray:
    """float32 copy with unit L2 rows (zero rows stay zero)."""
    out = np.array(vectors, dtype=np.float32, copy=True, order="C")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def choose_kind(count: int, kind: str = "auto", exact_max: int = EXACT_MAX_DEFAULT) -> str:
    if kind not in KINDS:
        raise ValueError(f"index kind {kind!r} is not one of {list(KINDS)}")
    if kind == "auto":
        return "flat" if count <= exact_max else "ivf"
    return kind


def default_nlist(count: int) -> int:
    """4 * sqrt(N) lists, as the original, but never fewer training points per list than faiss needs."""
    return max(1, min(int(4 * math.sqrt(count)), count // 39))


def default_nprobe(nlist: int) -> int:
    """Visit 1/8 of the lists (at least 16). On model features 1/16 gave recall@10 0.82 and 1/8 over 0.95
    (docs/bench/search.md); a 1M collection still scans 8x less than exact search."""
    return min(nlist, max(16, nlist // 8))


def build_index(
    vectors: np.ndarray,
    kind: str = "auto",
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    train_size: int | None = None,
    exact_max: int = EXACT_MAX_DEFAULT,
    seed: int = 0,
):
    """Build an inner-product index over the L2-normalised `vectors` [N, D]; return (index, IndexInfo).

    Row i of `vectors` gets id i, so ids index the feature table's metadata directly.
    """
    import faiss

    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"need a non-empty [N, D] array of vectors, got shape {vectors.shape}")
    start = time.perf_counter()
    data = normalize(vectors)
    count, dim = data.shape
    kind = choose_kind(count, kind, exact_max)
    info = IndexInfo(kind=kind, dim=dim, count=count)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        info.nlist = nlist or default_nlist(count)
        if info.nlist > count:
            raise ValueError(
                f"nlist={info.nlist} is larger than the collection ({count} vectors); "
                f"use a smaller nlist or kind='flat'"
            )
        info.nprobe = min(nprobe or default_nprobe(info.nlist), info.nlist)
        if kind == "ivfpq":
            info.pq_m = pq_m or _default_pq_m(dim)
            if dim % info.pq_m:
                raise ValueError(f"pq_m={info.pq_m} must divide the embedding size {dim}")
            factory = f"IVF{info.nlist},PQ{info.pq_m}"
        else:
            factory = f"IVF{info.nlist},Flat"
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if kind == "ivfpq":
            # index_factory turns on polysemous training, which only serves Hamming-distance search
            # (never used here) and costs minutes; plain PQ training takes a fraction of a second
            faiss.downcast_index(index).do_polysemous_training = False
        # the PQ codebooks (256 centroids each) want as many points as the coarse lists
        wanted = TRAIN_POINTS_PER_LIST * max(info.nlist, 256 if kind == "ivfpq" else 0)
        info.train_size = min(count, train_size or wanted)
        # train on a seeded sample of the REAL features (the original trained on random data)
        rows = np.random.default_rng(seed).choice(count, size=info.train_size, replace=False)
        index.cp.seed = seed
        index.train(data[np.sort(rows)])
        index.nprobe = info.nprobe
    index.add(data)
    info.build_seconds = round(time.perf_counter() - start, 3)
    log.info(
        "built %s index over %d x %d vectors in %.2f s%s",
        kind,
        count,
        dim,
        info.build_seconds,
        f" (nlist={info.nlist}, nprobe={info.nprobe}, trained on {info.train_size} real vectors)"
        if kind != "flat"
        else "",
    )
    return index, info


def _default_pq_m(dim: int) -> int:
    """8-bit codes with 4 dimensions per sub-quantiser (64 bytes for 256-d) keep recall high."""
    for m in (dim // 4, dim // 2, dim):
        if m and dim % m == 0:
            return m
    return dim


def save_index(index, info: IndexInfo, folder: str | Path) -> None:
    import faiss

    folder = Path(folder)
    with atomic_path(folder / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    atomic_write_json(folder / INFO_FILE, asdict(info))


def load_index(folder: str | Path, nprobe: int | None = None):
    """Read (index, IndexInfo) from `folder`; `nprobe` overrides the stored search setting."""
    import faiss

    folder = Path(folder)
    index_path, info_path = folder / INDEX_FILE, folder / INFO_FILE
    if not index_path.is_file() or not info_path.is_file():
        raise IndexMissingError(
            f"no search index in {folder} (expected {INDEX_FILE} and {INFO_FILE}); "
            f"build one with `python launch/search.py build-index --features DIR`"
        )
    info = IndexInfo(**json.loads(info_path.read_text()))
    index = faiss.read_index(str(index_path))
    if index.ntotal != info.count or index.d != info.dim:
        raise ValueError(
            f"{index_path} holds {index.ntotal} x {index.d} vectors but {info_path} says "
            f"{info.count} x {info.dim}; rebuild the index"
        )
    if info.kind != "flat":
        info.nprobe = min(nprobe or info.nprobe, info.nlist)
        index.nprobe = info.nprobe
    return index, info


def search(index, queries: np.ndarray, k: int):
    """Top-k (scores [Q, k], ids [Q, k]) for queries [Q, D]; cosine scores; id -1 pads short results."""
    if queries.ndim == 1:
        queries = queries[None]
    k = max(1, min(k, index.ntotal))
    return index.search(normalize(queries), k)


def recall_at_k(exact_ids: np.ndarray, approx_ids: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    hits = [len(set(e[:k]) & set(a[:k])) for e, a in zip(exact_ids, approx_ids)]
    return float(np.mean(hits) / k)


# ------------------------------------------------------------------------- a collection folder's index


def build_collection_index(folder: str | Path, kind: str = "auto", **options) -> IndexInfo:
    """Index the merged features of a collection folder (pipeline.search.features) and save beside them."""

    collection = Collection(folder)
    index, info = build_index(np.asarray(collection.vectors(), dtype=np.float32), kind, **options)
    save_index(index, info, folder)
    return info


@dataclass
class Hit:
    rank: int
    id: int
    score: float
    item: dict  # the collection's metadata row: key, caption, source, ...


class Searcher:
    """A collection folder opened for queries: its index plus the id -> metadata table."""

    def __init__(self, folder: str | Path, nprobe: int | None = None):

        self.folder = Path(folder)
        self.collection = Collection(folder)
        self.index, self.info = load_index(folder, nprobe)
        if self.info.count != len(self.collection):
            raise ValueError(
                f"the index in {folder} holds {self.info.count} vectors but the collection has "
                f"{len(self.collection)} items (features re-extracted?); rebuild the index"
            )

    def search(self, query: np.ndarray, k: int = 10) -> list[Hit]:
        """Top-k items for one query embedding [D] (normalised here)."""
        scores, ids = search(self.index, np.asarray(query, dtype=np.float32).reshape(1, -1), k)
        return [
            Hit(rank=r + 1, id=int(i), score=float(s), item=self.collection.items[int(i)])
            for r, (s, i) in enumerate(zip(scores[0], ids[0]))
            if i >= 0
        ]
