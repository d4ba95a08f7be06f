"""Search: inference API, resumable feature extraction, FAISS indexes and the query CLI."""

import json
import shutil

import numpy as np
import pytest
import torch

from pipeline.search import collection as coll_files
from pipeline.search import features as feats
from pipeline.search import index as idx
from test_search_helpers import (  # noqa: F401
    CORRUPT_KEY,
    EVIL_CAPTION,
    EVIL_KEY,
    SHARD_SIZES,
    collection,
    embedder,
    search_shards,
    tar_member,
    tiny_weights,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def one_faiss_thread():
    """OpenMP's spin-waiting makes faiss 10x slower on a shared 2-core machine; one thread is plenty here.
    (The setting is process-wide: torch shares the OpenMP runtime, so it is restored after each test.)"""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


# ------------------------------------------------------------------------------------------ extraction


def test_collection_table_frames_and_skipped_samples(collection, search_shards):
    coll = coll_files.Collection(collection)
    vectors = np.asarray(coll.vectors())
    assert len(coll) == sum(SHARD_SIZES) - 1 == len(vectors) == coll.info["count"]
    assert vectors.dtype == np.float32 and vectors.shape[1] == coll.info["dim"] == 32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the sample with a corrupt frame is not silently dropped: counted and recorded with its reason
    assert coll.info["skipped"] == {"bad_frames": 1}
    skipped = [json.loads(line) for line in (collection / coll_files.SKIPPED_FILE).read_text().splitlines()]
    assert [(s["key"], s["reason"], s["shard"]) for s in skipped] == [(CORRUPT_KEY, "bad_frames", "search-000001.tar")]
    keys = [item["key"] for item in coll.items]
    assert (
        CORRUPT_KEY not in keys and keys[0] == "clip_0_0" and [it["id"] for it in coll.items] == list(range(len(keys)))
    )
    evil = coll.items[keys.index(EVIL_KEY)]
    assert evil["caption"] == EVIL_CAPTION and evil["source"]["path"] == f"/videos/{EVIL_KEY}.mp4"
    # frames are served by byte range straight from the tar: exactly the stored JPEG members
    item = coll.items[5]
    for i in (0, 7):
        assert coll.frame(5, i) == tar_member(search_shards / item["shard"], f"{item['key']}.{i:03d}.jpg")
    with pytest.raises(IndexError, match="8 stored frames"):
        coll.frame(5, 8)
    # distinct clips give distinct vectors (the fixture's frames differ)
    assert len({tuple(np.round(v, 4)) for v in vectors}) == len(vectors)


class FailingEmbedder:
    """Delegates to a real Embedder; raises on call `fail_at` (a job killed mid-run)."""

    def __init__(self, inner, fail_at=None):
        self.inner, self.fail_at, self.calls, self.clips = inner, fail_at, 0, 0
        self.prep, self.num_frames, self.dim = inner.prep, inner.num_frames, inner.dim

    def embed_clips(self, clips):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed")
        self.clips += len(clips)
        return self.inner.embed_clips(clips)


def test_extraction_resumes_after_a_crash_and_matches_an_uninterrupted_run(
    tmp_path, embedder, search_shards, collection
):
    out = tmp_path / "coll"
    # batch 4: shard 0 (4 clips) is one batch; the crash hits shard 1's first batch
    crashing = FailingEmbedder(embedder, fail_at=2)
    with pytest.raises(RuntimeError, match="killed"):
        feats.extract_features(
            crashing, search_shards, out, batch_size=4, num_workers=0, dtype="float32", progress=False
        )
    done = sorted(p.name for p in (out / feats.PARTS_DIR).iterdir())
    assert done == ["search-000000.npz"]  # no half part, no temp file left under a final name
    assert feats.pending_parts(search_shards, out) == ["search-000001.tar", "search-000002.tar"]
    with pytest.raises(FileNotFoundError, match="2 shards have no part"):
        feats.merge_parts(search_shards, out, {})
    resumed = FailingEmbedder(embedder)
    counts = feats.extract_features(
        resumed, search_shards, out, batch_size=4, num_workers=0, dtype="float32", progress=False
    )
    assert counts == {"shards": 2, "embedded": 5, "skipped": 1} and resumed.clips == 5  # shard 0 not redone
    feats.merge_parts(search_shards, out, {})
    # equal up to float rounding (a different torch thread count changes summation order)
    np.testing.assert_allclose(
        np.load(out / coll_files.FEATURES_FILE), np.load(collection / coll_files.FEATURES_FILE), atol=1e-6
    )
    assert (out / coll_files.ITEMS_FILE).read_text() == (collection / coll_files.ITEMS_FILE).read_text()
    # a third run has nothing left to do
    again = FailingEmbedder(embedder)
    assert feats.extract_features(again, search_shards, out, num_workers=0, progress=False)["shards"] == 0
    assert again.calls == 0


def test_two_ranks_with_worker_processes_equal_one_rank(tmp_path, embedder, search_shards, collection):
    out = tmp_path / "coll"
    for rank in (1, 0):
        feats.extract_features(
            embedder,
            search_shards,
            out,
            rank=rank,
            world_size=2,
            batch_size=2,
            num_workers=2,
            dtype="float16",
            progress=False,
        )
    feats.wait_for_parts(search_shards, out, timeout_s=1)
    info = feats.merge_parts(search_shards, out, {})
    assert info["dtype"] == "float16" and info["count"] == sum(SHARD_SIZES) - 1
    ranked = np.load(out / coll_files.FEATURES_FILE)
    np.testing.assert_allclose(ranked.astype(np.float32), np.load(collection / coll_files.FEATURES_FILE), atol=2e-3)


def test_missing_manifest_and_broken_shard_give_clear_errors(tmp_path, embedder, search_shards):
    with pytest.raises(FileNotFoundError, match="manifest.json is missing: .* is not a finished make-shards folder"):
        feats.extract_features(embedder, tmp_path, tmp_path / "out", progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(search_shards, broken)
    data = (broken / "search-000001.tar").read_bytes()
    (broken / "search-000001.tar").write_bytes(data[: len(data) // 2] + b"\x01garbage" * 100)
    with pytest.raises(
        ValueError,
        match=r"shard .*search-000001.tar holds [12] samples but the manifest says 3: "
        r"it is truncated or corrupt; check it with `make-shards verify`",
    ):
        feats.extract_features(embedder, broken, tmp_path / "out", num_workers=0, progress=False)
    assert feats.pending_parts(broken, tmp_path / "out") == ["search-000001.tar", "search-000002.tar"]


# ------------------------------------------------------------------------------------------ inference API


def test_video_file_embeds_like_its_shard_and_ranking_is_consistent(tmp_path, tiny_weights, embedder):
    """A folder of mp4s through `extract --media` (make-shards on the fly) gives the vectors that
    `Embedder.embed_video_file` computes from the files; rank_videos/rank_captions agree with them."""
    from launch import search as cli
    from media import render_clip

    media = tmp_path / "media"
    files = [
        render_clip(media / f"{name}.mp4", seconds=1.6, size=(80, 64), fps=10, pattern=pattern)
        for name, pattern in (("test_pattern", "testsrc2"), ("colour_bars", "smptebars"), ("rgb_test", "rgbtestsrc"))
    ]
    out = tmp_path / "coll"
    assert (
        cli.main(
            [
                "extract",
                "--model",
                str(tiny_weights),
                "--media",
                str(media),
                "--out",
                str(out),
                "--dtype",
                "float32",
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    coll = coll_files.Collection(out)
    assert [it["caption"] for it in coll.items] == ["colour bars", "rgb test", "test pattern"]
    by_path = {it["source"]["path"]: i for i, it in enumerate(coll.items)}
    vectors = np.asarray(coll.vectors())
    direct = {f.name: embedder.embed_video_file(f) for f in files}
    for f in files:
        np.testing.assert_allclose(direct[f.name], vectors[by_path[str(f.resolve())]], atol=1e-5)
    assert len({tuple(np.round(v, 3)) for v in direct.values()}) == 3

    caption = "a red square moves to the left"
    ranked = embedder.rank_videos(caption, direct)
    text = embedder.embed_texts([caption])[0]
    expected = sorted(direct, key=lambda n: -float(direct[n] @ text))
    assert [n for n, _ in ranked] == expected
    assert all(a >= b for (_, a), (_, b) in zip(ranked, ranked[1:]))
    captions = ["colour bars", "a test pattern", "rgb", caption]
    ranked_caps = embedder.rank_captions(direct["colour_bars.mp4"], captions)
    scores = dict(ranked_caps)
    for c, v in zip(captions, embedder.embed_texts(captions)):
        assert scores[c] == pytest.approx(float(v @ direct["colour_bars.mp4"]), abs=1e-5)
    assert [s for _, s in ranked_caps] == sorted(scores.values(), reverse=True)
    # a folder of frames is one clip; a list of images gives one vector each
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i in range(8):
        (frames_dir / f"{i:03d}.jpg").write_bytes(coll.frame(0, i))
    folder_vec = embedder.embed_frames_folder(frames_dir)
    assert float(folder_vec @ vectors[0]) > 0.999
    images = embedder.embed_images(sorted(frames_dir.iterdir())[:3])
    assert images.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="cannot read video"):
        embedder.embed_video_file(frames_dir / "000.jpg.missing")


def test_embedder_runs_on_cuda_when_present(tiny_weights, embedder):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine (the GPU path runs on GPU CI machines)")
    from pipeline.search.inference import Embedder

    gpu = Embedder.load(tiny_weights, device="cuda")
    clips = torch.randint(0, 256, (2, 4, 3, 32, 32), dtype=torch.uint8)
    np.testing.assert_allclose(gpu.embed_clips(clips), embedder.embed_clips(clips), atol=1e-4)


# ------------------------------------------------------------------------------------------ indexes


def clustered(n, dim=32, centres=64, seed=0):
    """Unit vectors around a few centres, the shape real embedding collections have."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return idx.normalize(x)


def test_exact_index_is_brute_force_cosine():
    data = clustered(500) * np.random.default_rng(1).uniform(0.5, 3, (500, 1)).astype(np.float32)  # unnormalised
    index, info = idx.build_index(data)
    assert info.kind == "flat"
    queries = clustered(20, seed=2)
    scores, ids = idx.search(index, queries, 5)
    cos = queries @ idx.normalize(data).T
    np.testing.assert_array_equal(ids, np.argsort(-cos, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores, np.sort(cos, axis=1)[:, ::-1][:, :5], atol=1e-5)


def test_ivf_is_trained_on_the_real_features_and_keeps_recall(one_faiss_thread):
    """Our IVF (trained on the collection) vs the original's bug (trained on np.random.rand data)."""
    import faiss

    data, queries = clustered(20_000), clustered(200, seed=3)
    _, exact = idx.search(idx.build_index(data, "flat")[0], queries, 10)
    index, info = idx.build_index(data, "ivf")
    assert (info.kind, info.nlist, info.nprobe) == ("ivf", idx.default_nlist(20_000), idx.default_nprobe(info.nlist))
    assert info.train_size == min(20_000, idx.TRAIN_POINTS_PER_LIST * info.nlist)
    ours = idx.recall_at_k(exact, idx.search(index, queries, 10)[1], 10)
    assert ours >= 0.95

    bugged = faiss.index_factory(32, f"IVF{info.nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    bugged.train(np.random.default_rng(0).random((info.train_size, 32), dtype=np.float32))
    bugged.add(data)
    bugged.nprobe = info.nprobe
    assert idx.recall_at_k(exact, idx.search(bugged, queries, 10)[1], 10) < ours - 0.1

    pq, pq_info = idx.build_index(data, "ivfpq", nprobe=info.nprobe)
    # 8 bytes per vector instead of 128: compression costs recall, but it is far above the bugged IVF's
    pq_recall = idx.recall_at_k(exact, idx.search(pq, queries, 10)[1], 10)
    assert pq_info.pq_m == 8 and 0.5 <= pq_recall < ours


def test_auto_kind_by_size_and_save_load(tmp_path, one_faiss_thread):
    assert idx.choose_kind(100_000) == "flat" and idx.choose_kind(100_001) == "ivf"
    assert idx.choose_kind(10, "ivfpq") == "ivfpq"
    with pytest.raises(ValueError, match="not one of"):
        idx.choose_kind(10, "hnsw")
    data = clustered(3000)
    index, info = idx.build_index(data, exact_max=2000)
    assert info.kind == "ivf"
    with pytest.raises(idx.IndexMissingError, match="build-index"):
        idx.load_index(tmp_path)
    idx.save_index(index, info, tmp_path)
    loaded, loaded_info = idx.load_index(tmp_path)
    assert loaded_info == info
    np.testing.assert_array_equal(idx.search(loaded, data[:7], 4)[1], idx.search(index, data[:7], 4)[1])
    _, wider = idx.load_index(tmp_path, nprobe=10_000)
    assert wider.nprobe == info.nlist
    with pytest.raises(ValueError, match="larger than the collection"):
        idx.build_index(data[:50], "ivf", nlist=100)


# ------------------------------------------------------------------------------------------ query CLI


def test_query_cli_prints_ranked_results(collection, embedder, capsys):
    from launch import search as cli

    query = "clip 0 2 with coloured blocks"
    assert cli.main(["query", str(collection), *query.split(), "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    searcher = idx.Searcher(collection)
    hits = searcher.search(embedder.embed_texts([query])[0], 3)
    for line, hit in zip(lines, hits):
        fields = line.split()
        assert fields[0] == str(hit.rank) and fields[2] == f"id={hit.id}" and fields[3] == hit.item["key"]
        assert float(fields[1]) == pytest.approx(hit.score, abs=1e-4)
        assert fields[4] == hit.item["source"]["path"]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    assert cli.main(["query", str(collection), "--json", "-k", "2", query]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [h.id for h in hits[:2]] and rows[0]["caption"] == hits[0].item["caption"]


def test_query_cli_errors_are_clear(collection, tmp_path, capsys):
    from launch import search as cli

    bare = tmp_path / "no_index"
    shutil.copytree(collection, bare, ignore=shutil.ignore_patterns("index.*"))
    assert cli.main(["query", str(bare), "anything"]) == 2
    err = capsys.readouterr().err
    assert "no search index in" in err and "build-index" in err
    assert cli.main(["query", str(tmp_path / "nowhere"), "anything"]) == 2
    assert "no extracted features" in capsys.readouterr().err
    assert cli.main(["query", str(collection), "  "]) == 2
    assert "query is empty" in capsys.readouterr().err
    assert cli.main(["build-index", str(bare), "--kind", "ivf", "--nlist", "50"]) == 2
    assert "larger than the collection" in capsys.readouterr().err
