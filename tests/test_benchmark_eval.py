"""The evaluation protocols of the paper's benchmarks (docs/TRAINING.md, 'Benchmarks'): LSMDC one caption per
clip, MSVD every caption its own text->video query, DiDeMo one paragraph per video; each on a hand-checked
similarity matrix, the paragraph built by the loader, and end to end: a small tree in the data set's shipped
layout (real videos from ffmpeg) -> make-shards lsmdc|msvd|didemo -> loader -> launch/evaluate.py with the
benchmark's fine-tuning config (a tiny model in place of ViT-B/16)."""

import json
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import media
from foundation.schema import ConfigError
from launch import evaluate
from models import FrozenInTime, TextConfig, preset, save_pretrained
from models.tiny import write_tiny_text_model
from pipeline.data.loader import build_eval_loader
from pipeline.data.options import DatasetSpec, LoaderOptions
from pipeline.data.tokenize import load_tokenizer, tokenize
from pipeline.train.metrics import retrieval_metrics, t2v_ranks, v2t_ranks
from shard_tools import cli
from shardcli import shards_argv
from shardgen import sample_members, write_manifest, write_tar

STORED_FRAMES = 4


def test_lsmdc_one_caption_per_clip_hand_computed():
    sims = np.array(
        [
            [0.9, 0.2, 0.1, 0.3],  # clip 0: nothing higher -> rank 0
            [0.4, 0.3, 0.5, 0.1],  # clip 1: 0.4 and 0.5 higher -> 2
            [0.1, 0.6, 0.6, 0.2],  # clip 2: tied with clip 1's 0.6, optimistic -> 0
            [0.8, 0.1, 0.7, 0.2],  # clip 3: 0.8 and 0.7 higher -> 2
        ]
    )
    assert t2v_ranks(sims, np.arange(4)).tolist() == [0, 2, 0, 2]
    # columns: clip 1 [.2,.3,.6,.1] -> 1; clip 2 [.1,.5,.6,.7] -> 1; clip 3 [.3,.1,.2,.2]: 0.3 higher and
    # its sentence tied with sentence 2 -> positions 1 and 2 averaged -> 1.5
    assert v2t_ranks(sims, np.arange(4)).tolist() == [0, 1, 1, 1.5]
    m = retrieval_metrics(sims)
    assert m["t2v_R1"] == 50.0 and m["t2v_R5"] == 100.0 and m["t2v_MedR"] == 2.0 and m["t2v_MeanR"] == 2.0
    assert m["v2t_R1"] == 25.0 and m["v2t_MedR"] == 2.0 and m["v2t_MeanR"] == 1.875


# MSVD: videos 0, 1, 2 with 3, 1 and 2 captions, the rows in no particular order
MSVD_SIMS = np.array(
    [
        [0.5, 0.7, 0.1],  # video 0: 0.7 higher -> 1
        [0.2, 0.9, 0.3],  # video 1: -> 0
        [0.8, 0.1, 0.8],  # video 0: tied with video 2, optimistic -> 0
        [0.6, 0.4, 0.3],  # video 2: 0.6 and 0.4 higher -> 2
        [0.3, 0.2, 0.1],  # video 0: -> 0
        [0.2, 0.5, 0.4],  # video 2: 0.5 higher -> 1
    ]
)
MSVD_CAPTION_VIDEO = np.array([0, 1, 0, 2, 0, 2])


def test_msvd_every_caption_is_its_own_query_hand_computed():
    ranks = t2v_ranks(MSVD_SIMS, MSVD_CAPTION_VIDEO)
    assert ranks.tolist() == [1, 0, 0, 2, 0, 1]
    # each caption-video pair counted once: its video's rank among the distinct videos, written out
    pairs = [(MSVD_SIMS[c] > MSVD_SIMS[c, v]).sum() for c, v in enumerate(MSVD_CAPTION_VIDEO)]
    assert ranks.tolist() == pairs
    # v2t, best caption: video 0's captions score 0.5, 0.8, 0.3 in its column and 0.8 is first -> 0; video 2's
    # column [.1,.3,.8,.3,.1,.4]: caption 5 (0.4) behind 0.8 -> 1, caption 3 (0.3) tied with row 1 -> 2.5
    assert v2t_ranks(MSVD_SIMS, MSVD_CAPTION_VIDEO).tolist() == [0, 0, 1]
    m = retrieval_metrics(MSVD_SIMS, MSVD_CAPTION_VIDEO)
    assert m["t2v_R1"] == 50.0 and m["t2v_R5"] == 100.0  # 3 of 6 captions
    assert m["t2v_MedR"] == 1.5 and m["t2v_MeanR"] == pytest.approx(1 + 4 / 6)
    assert m["v2t_R1"] == pytest.approx(200 / 3) and m["v2t_MedR"] == 1.0 and m["v2t_MeanR"] == pytest.approx(4 / 3)
    # one query per video (its first caption, "primary") would count differently: 1 of 3
    first = [0, 1, 3]
    assert retrieval_metrics(MSVD_SIMS[first])["t2v_R1"] == pytest.approx(100 / 3)


def test_msvd_matches_the_originals_t2v_with_padded_and_masked_queries():
    """The original's t2v_metrics needs an equal query count per video: pad video-major, mask the padding."""
    per_video = np.bincount(MSVD_CAPTION_VIDEO).max()
    padded = np.full((3 * per_video, 3), -5.0)
    mask = np.zeros(3 * per_video, bool)
    for video in range(3):
        rows = MSVD_SIMS[MSVD_CAPTION_VIDEO == video]
        padded[video * per_video : video * per_video + len(rows)] = rows
        mask[video * per_video : video * per_video + len(rows)] = True
    dists = -padded  # the original: first position of the true distance in the sorted row
    sorted_dists = np.sort(dists, axis=1)
    gt = dists[np.arange(len(dists)), np.arange(len(dists)) // per_video][:, None]
    original = np.array([np.where(row == g)[0][0] for row, g in zip(sorted_dists, gt)])[mask]
    ours = t2v_ranks(MSVD_SIMS, MSVD_CAPTION_VIDEO)
    order = np.argsort(MSVD_CAPTION_VIDEO, kind="stable")  # video-major, as the padding lays them out
    assert ours[order].tolist() == original.tolist()


def test_didemo_paragraph_is_one_query_per_video_hand_computed():
    # one row per video (its paragraph), the whole video the target: square, recall counts videos
    paragraph_sims = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.5], [0.4, 0.2, 0.3]])
    assert t2v_ranks(paragraph_sims, np.arange(3)).tolist() == [0, 0, 1]  # paragraph 2: 0.4 beats its 0.3
    assert v2t_ranks(paragraph_sims, np.arange(3)).tolist() == [0, 0, 1]  # video 2's column [.1,.5,.3]
    m = retrieval_metrics(paragraph_sims)
    assert m["t2v_R1"] == pytest.approx(200 / 3) and m["t2v_MedR"] == 1.0 and m["t2v_MeanR"] == pytest.approx(4 / 3)


# ---- each data set in its shipped layout, through make-shards (docs/SHARDS.md) ---------------------------------

MOVIE = "1012_Unbreakable"
LSMDC = {
    f"{MOVIE}_00.00.{10 + 5 * i:02d}.000-00.00.{13 + 5 * i:02d}.500": [["SOMEONE", "looks", f"up{i}"]] for i in range(4)
}
MSVD = {  # clip: (vid number, captions); vid 1301 and up are the test split
    "-4wsuPCjDBc_5_15": (1301, [f"a man is slicing tomato {j}" for j in range(5)]),
    "-_hbPLsZvvo_18_25": (1302, ["a dog runs"]),
    "0hyZ__3YhZc_279_283": (1303, [f"a woman is dancing {j}" for j in range(3)]),
}
DIDEMO_MOMENTS = {
    "26292851@N04_4253489686_265c3c8051.mov": ["someone kicks the bug.", "the bug moves.", "a hand appears."],
    "10015567@N08_3655084291_d8b58466fa.m4v": ["a dog jumps.", "the camera pans left."],
    "98765432@N00_1234567890_abcdef0123.mp4": ["people walk.", "a car passes.", "lights turn on.", "it rains."],
}


def _video(path: Path, codec: str = "mpeg4", seconds: float = 0.8) -> None:
    """A short real video (MPEG-4 Part 2 as LSMDC's and MSVD's .avi files; H.264 for DiDeMo's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = ["-f", "lavfi", "-i", f"testsrc2=s=64x48:r=10:d={seconds}"]
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-y", *source, "-c:v", codec, str(path)], check=True)


def _lsmdc_tree(root: Path) -> Path:
    lists = root / "structured-symlinks"
    lists.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (lists / f"{split}_list.txt").write_text("".join(f"{clip}\n" for clip in LSMDC) if split == "test" else "")
    (lists / "raw-captions.pkl").write_bytes(pickle.dumps(LSMDC))
    (root / "frame_tar_list.txt").write_text("".join(f"/frames/{MOVIE}/{clip}.tar\n" for clip in LSMDC))
    for clip in LSMDC:
        _video(root / "videos" / MOVIE / f"{clip}.avi")
    return root


def _msvd_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "youtube_mapping.txt").write_text("".join(f"{clip} vid{n}\n" for clip, (n, _) in MSVD.items()))
    lines = [f"{clip} {caption}" for clip, (_, captions) in MSVD.items() for caption in captions]
    (root / "AllVideoDescriptions.txt").write_text("# clip name, then the description\n" + "\n".join(lines) + "\n")
    for clip in MSVD:
        _video(root / "YouTubeClips" / f"{clip}.avi")
    return root


def _didemo_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    moments = [(video, moment) for video, moments in DIDEMO_MOMENTS.items() for moment in moments]
    entries = [
        {"annotation_id": n, "description": moment, "video": video, "times": [[0, 1]] * 4, "num_segments": 6}
        for n, (video, moment) in enumerate(moments)
    ]
    (root / "test_data.json").write_text(json.dumps(entries))
    for video in DIDEMO_MOMENTS:
        _video(root / "videos" / video, codec="libx264")
    return root


PANDA = {  # Panda-70M's layout: one row per source video, its spans and their captions as parallel lists
    "clipA": ([["0:00:00.000", "0:00:01.000"], ["0:00:01.000", "0:00:02.500"]], ["a ball rolls", "a ball stops"]),
    "clipB": ([["0:00:00.500", "0:00:02.000"], ["0:00:00.000", "0:00:03.000"]], ["a cat sits", "a cat sits down"]),
}


def _panda_table(root: Path) -> Path:
    """Two 3-second source videos and a JSON-lines table of their spans."""
    rows = []
    for key, (spans, captions) in PANDA.items():
        _video(root / f"{key}.mp4", codec="libx264", seconds=3)
        rows.append({"videoID": key, "path": f"{key}.mp4", "timestamp": spans, "caption": captions})
    (root / "panda.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root / "panda.jsonl"


def _make_shards(source: str, root: Path, out: Path) -> Path:
    assert cli.main(shards_argv(source, root=root, split="test", out=out, workers=0, frames=STORED_FRAMES)) == 0
    return out


def _make_spans(table: Path, out: Path) -> Path:
    columns = {"key_col": "videoID", "path_col": "path", "spans_col": "timestamp", "caption_col": "caption"}
    assert cli.main(shards_argv("csv", table=table, out=out, workers=0, frames=STORED_FRAMES, **columns)) == 0
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    text = write_tiny_text_model(root / "text", arch="distilbert", hidden=32, layers=1, heads=2)
    cfg = preset("tiny")
    cfg.text = TextConfig(model=str(text), pretrained=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FrozenInTime(cfg)
    moments = root / "didemo_moments"  # moments as separate captions, for the loader's own paragraph
    moments.mkdir()
    shard = moments / "didemo_moments-000000.tar"
    captions = {f"v{i}": moments for i, moments in enumerate(DIDEMO_MOMENTS.values())}
    write_tar(shard, [m for key, caps in captions.items() for m in sample_members(key, "video", STORED_FRAMES, caps)])
    entry = {"path": shard.name, "samples": len(captions), "bytes": shard.stat().st_size}
    write_manifest(moments, "didemo_moments", "video", STORED_FRAMES, [entry])
    return {
        "root": root,
        "text": text,
        "weights": save_pretrained(model, cfg, root / "weights"),
        "shards": {
            "lsmdc": _make_shards("lsmdc", _lsmdc_tree(root / "LSMDC"), root / "lsmdc_test"),
            "msvd": _make_shards("msvd", _msvd_tree(root / "MSVD"), root / "msvd_test"),
            "didemo": _make_shards("didemo", _didemo_tree(root / "DiDeMo"), root / "didemo_test"),
            "didemo_moments": moments,
            "spans": _make_spans(_panda_table(root / "panda"), root / "spans_test"),
        },
    }


def _options(text: Path) -> dict:
    return {
        "num_workers": 0,
        "input_res": 32,
        "eval_resize": 32,
        "eval_crop": 32,
        "tokenizer": str(text),
        "max_text_length": 64,
    }


def test_paragraph_mode_joins_a_videos_captions_in_order_into_one_query(tiny):
    spec = DatasetSpec.from_dict(
        {
            "name": "didemo",
            "shards": str(tiny["shards"]["didemo_moments"]),
            "batch_size": 2,
            "num_frames": 4,
            "caption_mode": "paragraph",
        },
        "data.eval[0]",
    )
    options = LoaderOptions.from_dict(_options(tiny["text"]), "data.options")
    batches = list(build_eval_loader(spec, options, 0, 1))
    captions = {key: caps for b in batches for key, caps in zip(b["keys"], b["captions"])}
    assert captions == {f"v{i}": [" ".join(moments)] for i, moments in enumerate(DIDEMO_MOMENTS.values())}
    tokenizer = load_tokenizer(str(tiny["text"]))
    for batch in batches:  # the tokenized caption (val_loss, one-caption batches) is the paragraph too
        expected = tokenize(tokenizer, [c for caps in batch["captions"] for c in caps], 64)
        assert torch.equal(batch["text"]["input_ids"], expected["input_ids"])


@pytest.mark.parametrize(
    "dataset, videos, queries",
    [
        ("lsmdc", len(LSMDC), len(LSMDC)),
        ("msvd", len(MSVD), sum(len(c) for _, c in MSVD.values())),  # 9 captions, each its own query
        ("didemo", len(DIDEMO_MOMENTS), len(DIDEMO_MOMENTS)),  # one paragraph per video
        ("spans", 4, 4),  # clips cut from two long videos by time span, each its own target (the MSR-VTT recipe)
    ],
)
def test_finetune_config_evaluates_end_to_end(tiny, dataset, videos, queries, capsys):
    """launch/evaluate.py with configs/finetune_<dataset>_4f.json, its eval sets pointed at tiny shards."""
    shards = tiny["shards"][dataset]
    config, names = f"configs/finetune_{dataset}_4f.json", (f"{dataset}_val", f"{dataset}_test")
    if dataset == "spans":  # span clips evaluate like any clip set: MSR-VTT's config with one eval set
        config, names = "configs/finetune_msrvtt_4f.json", ("msrvtt_1ka",)
    out = tiny["root"] / f"{dataset}_metrics.json"
    sets = [
        f'model={{"preset": "tiny", "text": {{"model": "{tiny["text"]}"}}}}',
        f"data.options={json.dumps(_options(tiny['text']))}",
        f"output_dir={tiny['root'] / dataset}",
        f"data.train[0].shards={shards}",
        *(f"data.eval[{i}].{key}={v}" for i in range(len(names)) for key, v in (("shards", shards), ("batch_size", 2))),
    ]
    code = evaluate.main(
        [
            "--checkpoint",
            str(tiny["weights"]),
            "--config",
            config,
            *(arg for s in sets for arg in ("--set", s)),
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == set(names)
    test = metrics[names[-1]]
    assert test["num_videos"] == videos and test["num_captions"] == queries
    assert all(metrics[name] == test for name in names)  # the same shards under both names
    for direction in ("t2v", "v2t"):
        assert 0 <= test[f"{direction}_R1"] <= test[f"{direction}_R5"] <= test[f"{direction}_R10"] <= 100
    assert test["t2v_R5"] == 100.0  # at most 5 videos: every query's video is in its top 5
    assert np.isfinite(test["val_loss"])


def test_an_unknown_caption_mode_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"data\.eval\[2\]\.caption_mode"):
        DatasetSpec.from_dict(
            {"name": "msvd", "shards": "x", "batch_size": 2, "caption_mode": "pairs"},
            "data.eval[2]",
        )
