"""make-shards lsmdc / msvd / didemo on small trees in each data set's real file layout, made at test time:
real .avi / .mov / .mp4 files from ffmpeg, the annotation files in the formats the data sets ship (pickle,
text lists, CSV, JSON). Every input row is accounted for: a sample, or a failed row with its reason."""

import csv
import json
import pickle
import subprocess
import tarfile
from pathlib import Path

import pytest

import media
from shard_tools import cli
from shard_tools.rows import safe_key
from shardcli import shards_argv


def render_avi(path: Path, seconds: float = 1.0, size=(64, 48), fps: int = 10) -> Path:
    """An MPEG-4 Part 2 AVI (the codec LSMDC's and MSVD's .avi files use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    subprocess.run(
        [media.ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=s={w}x{h}:r={fps}:d={seconds}"]
        + ["-c:v", "mpeg4", "-q:v", "5", "-threads", "1", str(path)],
        check=True,
    )
    return path


def make(source: str, root: Path, split: str, out: Path) -> int:
    return cli.main(shards_argv(source, root=root, split=split, out=out, workers=0, frames=4))


def made(source: str, root: Path, split: str, out: Path, rows: int, failed: dict) -> dict[str, dict]:
    """Run make-shards (it must succeed) and check its manifest: named {source}_{split}, `rows` input rows,
    each one a sample or a failed row (`failed`: reason -> count). Returns key -> sample json."""
    assert make(source, root, split, out) == 0
    m, got = manifest(out), samples(out)
    assert m["name"] == f"{source}_{split}" and m["input_rows"] == rows and m["failed"] == failed
    assert m["total_samples"] == len(got) == rows - sum(failed.values())
    return got


def samples(out: Path) -> dict[str, dict]:
    """key -> sample json of every sample in the folder's shards."""
    found = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    info = json.loads(tar.extractfile(member).read())
                    found[info["key"]] = info
    return found


def failures(out: Path) -> dict[str, tuple[str, str]]:
    """key -> (reason, detail) of every failed row."""
    found = {}
    for stats in out.glob("*.stats.json"):
        for f in json.loads(stats.read_text())["failures"]:
            found[f["key"]] = (f["reason"], f["detail"])
    return found


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def verified(out: Path) -> bool:
    return cli.main(["verify", str(out)]) == 0


# ---- LSMDC ---------------------------------------------------------------------------------------------

MOVIE = "1012_Unbreakable"
LSMDC_CLIPS = {
    # clip id: (split, captions as raw-captions.pkl holds them, in frame_tar_list.txt, video on disk)
    f"{MOVIE}_00.00.49.560-00.00.53.196": ("test", [["SOMEONE", "looks", "up", "."]], True, True),
    f"{MOVIE}_00.01.02.000-00.01.04.500": ("test", [None, ["He", "turns", "away", "."]], True, True),
    f"{MOVIE}_00.01.10.000-00.01.12.000": ("test", None, True, True),  # no entry in the pickle
    f"{MOVIE}_00.01.20.000-00.01.22.000": ("test", [["One", "."], ["Two", "."]], True, True),
    f"{MOVIE}_00.01.30.000-00.01.32.000": ("test", [["Not", "on", "disk", "."]], True, False),
    f"{MOVIE}_00.01.40.000-00.01.42.000": ("test", [["Not", "in", "the", "tar", "list", "."]], False, True),
    f"{MOVIE}_00.00.10.000-00.00.12.000": ("train", [["SOMEONE", "runs", "."]], True, True),
}


@pytest.fixture(scope="module")
def lsmdc_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("LSMDC")
    lists = root / "structured-symlinks"
    lists.mkdir()
    for split in ("train", "val", "test"):
        ids = [clip for clip, (s, *_) in LSMDC_CLIPS.items() if s == split]
        (lists / f"{split}_list.txt").write_text("".join(f"{clip}\n" for clip in ids))
    captions = {clip: caps for clip, (_, caps, _, _) in LSMDC_CLIPS.items() if caps is not None}
    (lists / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    tar_list = [
        f"/scratch/shared/lsmdc/frames/{MOVIE}/{clip}.tar" for clip, (_, _, listed, _) in LSMDC_CLIPS.items() if listed
    ]
    (root / "frame_tar_list.txt").write_text("\n".join(tar_list) + "\n")
    for clip, (_, _, _, on_disk) in LSMDC_CLIPS.items():
        if on_disk:
            render_avi(root / "videos" / MOVIE / f"{clip}.avi")
    return root


def test_lsmdc_one_caption_per_clip_and_every_clip_accounted_for(lsmdc_root, tmp_path):
    out = tmp_path / "lsmdc"
    got = made("lsmdc", lsmdc_root, "test", out, rows=6, failed={"missing_field": 2, "bad_row": 1, "missing_file": 1})
    first, second = f"{MOVIE}_00.00.49.560-00.00.53.196", f"{MOVIE}_00.01.02.000-00.01.04.500"
    assert set(got) == {safe_key(first), safe_key(second)}
    assert got[safe_key(first)]["captions"] == ["SOMEONE looks up ."]
    assert got[safe_key(first)]["source"]["id"] == first
    assert got[safe_key(first)]["source"]["path"].endswith(f"videos/{MOVIE}/{first}.avi")
    assert got[safe_key(second)]["captions"] == ["He turns away ."]  # the None entry dropped, as the original
    assert got[safe_key(first)]["num_frames"] == 4
    failed = failures(out)
    reason, detail = failed[safe_key(f"{MOVIE}_00.01.10.000-00.01.12.000")]
    assert reason == "missing_field" and "test_list.txt line 3" in detail and "raw-captions.pkl" in detail
    reason, detail = failed[safe_key(f"{MOVIE}_00.01.20.000-00.01.22.000")]
    assert reason == "bad_row" and "has 2 captions" in detail
    reason, detail = failed[safe_key(f"{MOVIE}_00.01.30.000-00.01.32.000")]
    assert reason == "missing_file" and "00.01.30.000-00.01.32.000.avi" in detail
    reason, detail = failed[safe_key(f"{MOVIE}_00.01.40.000-00.01.42.000")]
    assert reason == "missing_field" and "frame_tar_list.txt" in detail
    assert verified(out)

    train = tmp_path / "train"
    assert make("lsmdc", lsmdc_root, "train", train) == 0
    assert [s["captions"] for s in samples(train).values()] == [["SOMEONE runs ."]]
    assert manifest(train)["name"] == "lsmdc_train"


def test_lsmdc_caption_pickle_never_runs_code(lsmdc_root, tmp_path, capsys):
    root = tmp_path / "LSMDC"
    (root / "structured-symlinks").mkdir(parents=True)
    for name in ("test_list.txt",):
        (root / "structured-symlinks" / name).write_text(f"{MOVIE}_00.00.49.560-00.00.53.196\n")
    (root / "frame_tar_list.txt").write_text((lsmdc_root / "frame_tar_list.txt").read_text())

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    pkl = root / "structured-symlinks" / "raw-captions.pkl"
    pkl.write_bytes(pickle.dumps({f"{MOVIE}_00.00.49.560-00.00.53.196": Evil()}))
    assert make("lsmdc", root, "test", tmp_path / "out") == 2
    err = capsys.readouterr()
    assert "pwned" not in err.out
    assert str(pkl) in err.err and "refusing to load builtins.print" in err.err
    assert not list((tmp_path / "out").glob("*.tar"))

    pkl.write_bytes(pickle.dumps({"a": [["b"]]})[:-5])  # cut short
    assert make("lsmdc", root, "test", tmp_path / "out") == 2
    assert f"{pkl}: not a readable pickle" in capsys.readouterr().err

    pkl.unlink()
    assert make("lsmdc", root, "test", tmp_path / "out") == 2
    assert f"{pkl} not found: --root must be the LSMDC folder" in capsys.readouterr().err


# ---- MSVD ----------------------------------------------------------------------------------------------

# clip name: (vid number, English captions, video on disk); the ids hold `_` and `-` like real ones
MSVD_CLIPS = {
    "-_hbPLsZvvo_18_25": (16, ["a man plays a guitar", "someone plays guitar"], True),
    "bQJQGoJF7_k_162_169": (1201, ["a woman slices an onion"], True),
    "eyhzdC936uk_15_27": (1301, [f"a dog runs in a field, take {i}" for i in range(40)], True),
    "0hyZ__3YhZc_279_283": (1302, ["a cat jumps"], True),
    "f-24IxG9ijw_25_40": (1303, [], True),  # no English caption
    "f9Won2JpOEU_60_80": (1304, ["a car drives"], False),  # video missing
}


def _msvd_tree(root: Path) -> Path:
    mapping = "".join(f"{clip} vid{n}\n" for clip, (n, _, _) in MSVD_CLIPS.items())
    (root / "youtube_mapping.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "youtube_mapping.txt").write_text(mapping)
    for clip, (_, _, on_disk) in MSVD_CLIPS.items():
        if on_disk:
            render_avi(root / "YouTubeClips" / f"{clip}.avi", seconds=0.8)
    return root


@pytest.fixture(scope="module")
def msvd_root(tmp_path_factory) -> Path:
    root = _msvd_tree(tmp_path_factory.mktemp("MSVD"))
    lines = ["# Video descriptions, one per line: clip name, then the description", "#"]
    lines += [f"{clip} {caption}" for clip, (_, captions, _) in MSVD_CLIPS.items() for caption in captions]
    lines += ["f-24IxG9ijw_25_40"]  # a clip name without its caption
    (root / "AllVideoDescriptions.txt").write_text("\n".join(lines) + "\n")
    return root


def test_msvd_keeps_every_caption_of_a_clip_and_splits_by_vid_number(msvd_root, tmp_path):
    out = tmp_path / "test"
    got = made("msvd", msvd_root, "test", out, rows=4, failed={"missing_field": 1, "missing_file": 1})
    assert set(got) == {"eyhzdC936uk_15_27", "0hyZ__3YhZc_279_283"}
    dog = got["eyhzdC936uk_15_27"]
    assert dog["captions"] == [f"a dog runs in a field, take {i}" for i in range(40)]
    assert dog["extra"] == {"alias": "vid1301", "youtube_id": "eyhzdC936uk", "start": 15, "end": 27}
    assert got["0hyZ__3YhZc_279_283"]["extra"]["youtube_id"] == "0hyZ__3YhZc"
    failed = failures(out)
    assert failed["f-24IxG9ijw_25_40"][0] == "missing_field"
    assert "youtube_mapping.txt line 5" in failed["f-24IxG9ijw_25_40"][1]
    assert (
        "AllVideoDescriptions.txt (1 line(s) without one: AllVideoDescriptions.txt line"
        in failed["f-24IxG9ijw_25_40"][1]
    )
    assert failed["f9Won2JpOEU_60_80"][0] == "missing_file"
    assert "YouTubeClips/f9Won2JpOEU_60_80.avi" in failed["f9Won2JpOEU_60_80"][1]
    assert verified(out)
    for split, key in (("train", "-_hbPLsZvvo_18_25"), ("val", "bQJQGoJF7_k_162_169")):
        assert make("msvd", msvd_root, split, tmp_path / split) == 0
        assert list(samples(tmp_path / split)) == [key]
    assert samples(tmp_path / "train")[key := "-_hbPLsZvvo_18_25"]["captions"] == MSVD_CLIPS[key][1]


def test_msvd_corpus_csv_keeps_english_rows_and_names_a_line_without_a_caption(tmp_path, capsys):
    root = _msvd_tree(tmp_path / "MSVD")
    table = root / "MSR Video Description Corpus.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"])
        for clip, (_, captions, _) in MSVD_CLIPS.items():
            video, start, end = clip.rsplit("_", 2)
            for i, caption in enumerate(captions):
                w.writerow([video, start, end, 100 + i, "clean", 20, "English", caption])
                w.writerow([video, start, end, 200 + i, "unverified", 25, "German", f"{caption} (auf Deutsch)"])
        w.writerow(["0hyZ__3YhZc", "279", "283", 999, "clean", 20, "English", ""])  # no description
    assert make("msvd", root, "test", tmp_path / "out") == 0
    got = samples(tmp_path / "out")
    assert got["eyhzdC936uk_15_27"]["captions"] == MSVD_CLIPS["eyhzdC936uk_15_27"][1]  # English only, in order
    cat = got["0hyZ__3YhZc_279_283"]
    assert cat["captions"] == ["a cat jumps"]
    assert cat["extra"]["dropped_captions"] == ["MSR Video Description Corpus.csv line 92 has no Description"]
    assert manifest(tmp_path / "out")["input_rows"] == 4 and manifest(tmp_path / "out")["total_samples"] == 2

    (root / "youtube_mapping.txt").write_text("eyhzdC936uk_15_27 vid1301\nf-24IxG9ijw_25_40\n")
    assert make("msvd", root, "test", tmp_path / "out2") == 2
    err = capsys.readouterr().err
    assert "youtube_mapping.txt: line 2 is 'f-24IxG9ijw_25_40'" in err
    table.unlink()
    (root / "youtube_mapping.txt").write_text("eyhzdC936uk_15_27 vid1301\n")
    assert make("msvd", root, "test", tmp_path / "out3") == 2
    assert "AllVideoDescriptions.txt not found: --root must be the MSVD folder" in capsys.readouterr().err


def test_msvd_retrieval_packaging_lists_and_caption_pickle(msvd_root, tmp_path):
    """collaborative-experts' / CLIP4Clip's files: {split}_list.txt and raw-captions.pkl (token lists)."""
    root = tmp_path / "msvd_data"
    root.mkdir()
    (root / "YouTubeClips").symlink_to(msvd_root / "YouTubeClips")
    (root / "test_list.txt").write_text("0hyZ__3YhZc_279_283\neyhzdC936uk_15_27\nf-24IxG9ijw_25_40\n")
    captions = {
        "0hyZ__3YhZc_279_283": [["a", "cat", "jumps"], None, ["the", "cat", "leaps"]],
        "eyhzdC936uk_15_27": [["a", "dog", "runs"]],
        "f-24IxG9ijw_25_40": [],
    }
    (root / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    out = tmp_path / "out"
    assert make("msvd", root, "test", out) == 0
    m = manifest(out)
    assert m["input_rows"] == 3 and m["total_samples"] == 2 and m["failed"] == {"missing_field": 1}
    cat = samples(out)["0hyZ__3YhZc_279_283"]
    assert cat["captions"] == ["a cat jumps", "the cat leaps"]
    assert cat["extra"] == {
        "dropped_captions": ["raw-captions.pkl holds None as a caption of 0hyZ__3YhZc_279_283"],
        "youtube_id": "0hyZ__3YhZc",
        "start": 279,
        "end": 283,
    }
    reason, detail = failures(out)["f-24IxG9ijw_25_40"]
    assert reason == "missing_field" and detail.startswith("test_list.txt line 3: clip f-24IxG9ijw_25_40 has no")
    assert verified(out)


# ---- DiDeMo --------------------------------------------------------------------------------------------

FLICKR = "26292851@N04_4253489686_265c3c8051.mov"  # kept under its Flickr name
AWS = "10015567@N08_3655084291_d8b58466fa.m4v"  # saved by the AWS downloader as {video}.mp4
GONE = "99999999@N00_1111111111_0000000000.avi"  # not downloaded
BROKEN = "12345678@N01_2222222222_aaaaaaaaaa.mp4"  # one of its moments has malformed times


def _moment(annotation_id, video, description, times):
    return {
        "num_segments": 6,
        "description": description,
        "dl_link": f"https://www.flickr.com/video_download.gne?id={video.split('_')[1]}",
        "times": times,
        "video": video,
        "annotation_id": annotation_id,
    }


@pytest.fixture(scope="module")
def didemo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("DiDeMo")
    moments = [
        _moment(1, FLICKR, "someone kicks the bug towards some rocks.", [[4, 4], [4, 4], [0, 0], [4, 4]]),
        _moment(2, AWS, "the dog jumps up. ", [[1, 2], [1, 1], [2, 2], [1, 2]]),
        _moment(3, FLICKR, "the camera pans left", [[0, 1], [0, 1], [1, 1], [0, 0]]),
        _moment(4, GONE, "a red car drives by", [[2, 3], [2, 3], [2, 2], [3, 3]]),
        _moment(5, BROKEN, "a boat", [[5, 5], [5, 5], [5, 5], [5, 5]]),
        _moment(6, BROKEN, "the boat turns", [[3, 1]]),  # end before start
        {"description": "a moment that names no video", "times": [[0, 0]], "annotation_id": 7},
        "not an object",
        _moment(9, FLICKR, "the bug stops", [[5, 5], [5, 5], [4, 5], [5, 5]]),
        _moment(10, AWS, "the dog sits", [[3, 3], [3, 3], [3, 4], [3, 3]]),
    ]
    (root / "test_data.json").write_text(json.dumps(moments))
    (root / "val_data.json").write_text(json.dumps([_moment(1, FLICKR, "only one moment", [[0, 0]])]))
    media.render_clip(root / "videos" / FLICKR, seconds=1.5)
    media.render_clip(root / "videos" / f"{AWS}.mp4", seconds=1.0)
    media.render_clip(root / "videos" / BROKEN, seconds=1.0)
    return root


def test_didemo_one_paragraph_per_video_with_its_moments(didemo_root, tmp_path):
    out = tmp_path / "didemo"
    got = made("didemo", didemo_root, "test", out, rows=6, failed={"missing_file": 1, "bad_row": 3})
    assert set(got) == {safe_key(FLICKR), safe_key(AWS)}
    bug = got[safe_key(FLICKR)]
    assert bug["captions"] == ["someone kicks the bug towards some rocks. the camera pans left the bug stops"]
    assert bug["source"]["id"] == FLICKR and bug["source"]["path"].endswith(f"videos/{FLICKR}")
    assert [x["annotation_id"] for x in bug["extra"]["moments"]] == [1, 3, 9]
    assert bug["extra"]["moments"][1]["times"] == [[0, 1], [0, 1], [1, 1], [0, 0]]
    assert bug["extra"]["moments"][1]["seconds"] == [[0, 10], [0, 10], [5, 10], [0, 5]]
    assert bug["extra"]["num_segments"] == 6 and bug["extra"]["dl_link"].endswith("id=4253489686")
    dog = got[safe_key(AWS)]
    assert dog["captions"] == ["the dog jumps up. the dog sits"]
    assert dog["source"]["path"].endswith(f"videos/{AWS}.mp4")
    failed = failures(out)
    assert failed[safe_key(GONE)][0] == "missing_file"
    reason, detail = failed[safe_key(BROKEN)]
    assert reason == "bad_row" and "test_data.json entry 5" in detail and "[3, 1]" in detail
    assert failed["entry000006"] == ("bad_row", "test_data.json entry 6: video None, not a moment naming its video")
    assert failed["entry000007"][0] == "bad_row" and "a JSON str" in failed["entry000007"][1]
    assert verified(out)
    assert make("didemo", didemo_root, "val", tmp_path / "val") == 0
    assert [s["captions"] for s in samples(tmp_path / "val").values()] == [["only one moment"]]


def test_didemo_broken_annotation_file_is_named(didemo_root, tmp_path, capsys):
    root = tmp_path / "DiDeMo"
    root.mkdir()
    (root / "test_data.json").write_text('[{"video": "a.mov", "description": "x", "times": [[0, 0]]}')
    assert make("didemo", root, "test", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{root / 'test_data.json'}: not JSON" in err and "--root must be the DiDeMo folder" in err
    (root / "test_data.json").write_text('{"video": "a.mov"}')
    assert make("didemo", root, "test", tmp_path / "out") == 2
    assert "holds a JSON dict, not a list of moments" in capsys.readouterr().err
    assert make("didemo", root, "train", tmp_path / "out") == 2
    assert f"{root / 'train_data.json'} not found" in capsys.readouterr().err


def test_didemo_split_list_chooses_the_videos(didemo_root, tmp_path):
    root = tmp_path / "DiDeMo"
    root.mkdir()
    (root / "test_data.json").write_text((didemo_root / "test_data.json").read_text())
    (root / "videos").symlink_to(didemo_root / "videos")
    unlisted = "00000000@N00_0000000000_0000000000.mov"  # in the list, no moment in the JSON
    (root / "test_list.txt").write_text(f"{AWS}\n{FLICKR}\n{unlisted}\n{AWS}\n")
    out = tmp_path / "out"
    # four listed rows and the two entries that name no video; GONE and BROKEN are not in the list
    got = made("didemo", root, "test", out, rows=6, failed={"missing_field": 1, "duplicate_key": 1, "bad_row": 2})
    assert [got[k]["row"] for k in (safe_key(AWS), safe_key(FLICKR))] == [0, 1]
    assert got[safe_key(AWS)]["captions"] == ["the dog jumps up. the dog sits"]
    failed = failures(out)
    assert failed[safe_key(unlisted)] == (
        "missing_field",
        f"test_list.txt line 3: video {unlisted} has no moment in test_data.json",
    )
    assert verified(out)
