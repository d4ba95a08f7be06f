"""make-shards: shard format, frame sampling, determinism, array-task slicing, sources, verify."""

import csv
import io
import json
import pickle
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import simplejpeg

import media
from shard_tools import cli
from shard_tools.api import RunOptions, ShardOptions, make_shards
from shard_tools.sampling import resized_size, segment_midpoints
from shard_tools.sources import cc3m_image_name
from shard_tools.verify import verify
from shardcli import shards_argv

WEBVID_HEADER = ["videoid", "contentUrl", "duration", "page_dir", "name"]
# (videoid, seconds, size, fps, gop): long and short GOPs, odd sizes, a portrait clip
CLIPS = [
    (101, 2.0, (96, 64), 10, 5),
    (102, 1.0, (64, 48), 12, None),
    (103, 1.5, (48, 80), 10, 3),
    (104, 0.3, (64, 48), 10, None),
    (105, 2.0, (80, 48), 8, 4),
    (106, 1.0, (64, 64), 10, 1),
    (107, 1.2, (72, 40), 10, 6),
]


@pytest.fixture(scope="module")
def webvid(tmp_path_factory):
    root = tmp_path_factory.mktemp("webvid")
    for vid, seconds, size, fps, gop in CLIPS:
        media.render_clip(root / "videos" / "000001_000050" / f"{vid}.mp4", seconds, size, fps, gop=gop)
    table = root / "results_2M_train.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(WEBVID_HEADER)
        for vid, *_ in CLIPS:
            w.writerow(
                [
                    vid,
                    f"https://example.invalid/{vid}.mp4",
                    "PT00H00M02S",
                    "000001_000050",
                    f"clip number {vid}, with a comma",
                ]
            )
        w.writerow([999, "https://example.invalid/999.mp4", "PT1S", "000001_000050", "file not on disk"])
    return root


def webvid_argv(webvid, out, **options) -> list[str]:
    return shards_argv("webvid", csv=webvid / "results_2M_train.csv", videos_root=webvid / "videos", out=out, **options)


def run_webvid(webvid, out, **options):
    assert cli.main(webvid_argv(webvid, out, **options)) == 0


def tar_members(path):
    with tarfile.open(path) as tar:
        return [(m.name, m.mtime, m.uid, m.gid, m.uname, tar.extractfile(m).read()) for m in tar]


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def test_segment_midpoints_match_the_original_and_repeat_for_short_clips():
    for n in range(8, 400):
        bounds = [int(x) for x in np.linspace(0, n, 9)]
        assert segment_midpoints(n, 8) == [(bounds[j] + bounds[j + 1] - 1) // 2 for j in range(8)]
    assert segment_midpoints(1, 8) == [0] * 8
    assert segment_midpoints(5, 8) == [0, 0, 1, 2, 2, 3, 4, 4]
    assert segment_midpoints(300, 4) == [37, 112, 187, 262]
    assert resized_size(640, 360, 256) == (456, 256)
    assert resized_size(360, 640, 256) == (256, 456)
    assert resized_size(64, 48, 256) == (64, 48)  # never upscaled


def test_webvid_shards_follow_the_format(webvid, tmp_path):
    out = tmp_path / "out"
    run_webvid(webvid, out, samples_per_shard=3, workers=2, short_side=32, quality=80)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "fit-shards/1" and manifest["kind"] == "video"
    assert manifest["frames_per_sample"] == 8 and manifest["input_rows"] == 8
    assert manifest["total_samples"] == 7 and manifest["failed"] == {"missing_file": 1}
    assert [s["path"] for s in manifest["shards"]] == ["webvid-000000.tar", "webvid-000001.tar", "webvid-000002.tar"]
    assert [s["samples"] for s in manifest["shards"]] == [3, 3, 1]
    assert manifest["options"]["short_side"] == 32 and manifest["options"]["quality"] == 80
    for shard in manifest["shards"]:
        assert (out / shard["path"]).stat().st_size == shard["bytes"]
    stats = json.loads((out / "webvid-000002.stats.json").read_text())
    assert stats["failures"][0]["reason"] == "missing_file" and stats["failures"][0]["key"] == "999"
    assert "999.mp4" in stats["failures"][0]["detail"]

    members = tar_members(out / "webvid-000000.tar")
    names = [m[0] for m in members]
    assert names[:10] == [f"101.{i:03d}.jpg" for i in range(8)] + ["101.json", "101.txt"]
    assert all(m[1:5] == (0, 0, 0, "") for m in members)  # fixed tar metadata
    data = {m[0]: m[5] for m in members}
    info = json.loads(data["101.json"])
    assert data["101.txt"].decode() == "clip number 101, with a comma" == info["captions"][0]
    assert info["key"] == "101" and info["kind"] == "video" and info["num_frames"] == 8
    assert info["source"] == {
        "id": "101",
        "url": "https://example.invalid/101.mp4",
        "path": str(webvid / "videos" / "000001_000050" / "101.mp4"),
    }
    assert (info["width"], info["height"], info["fps"], info["duration"]) == (96, 64, 10.0, 2.0)
    assert info["frame_indices"] == segment_midpoints(20, 8)
    assert info["frame_timestamps"] == pytest.approx([i / 10 for i in info["frame_indices"]])
    assert info["extra"] == {"duration": "PT00H00M02S", "page_dir": "000001_000050"}
    # the stored frames are exactly the sampled source frames, resized to short side 32
    with av.open(str(webvid / "videos" / "000001_000050" / "101.mp4")) as c:
        source = [f for f in c.decode(video=0)]
    for j, index in enumerate(info["frame_indices"]):
        stored = simplejpeg.decode_jpeg(data[f"101.{j:03d}.jpg"])
        assert stored.shape == (32, 48, 3)
        expected = source[index].to_ndarray(width=48, height=32, format="rgb24", interpolation="AREA")
        reference = simplejpeg.decode_jpeg(simplejpeg.encode_jpeg(expected, 80, colorsubsampling="420"))
        assert np.array_equal(stored, reference), f"stored frame {j} is not source frame {index}"
    # the 0.3 s clip has 3 frames: still 8 stored, indices repeat
    second = {m[0]: m[5] for m in tar_members(out / "webvid-000001.tar")}
    info104 = json.loads(second["104.json"])
    assert info104["frame_indices"] == segment_midpoints(3, 8) and len(set(info104["frame_indices"])) == 3
    assert verify(out).ok


def test_same_input_gives_byte_identical_shards_and_tasks_equal_one_run(webvid, tmp_path):
    single = tmp_path / "single"
    run_webvid(webvid, single, samples_per_shard=2, workers=2)
    again = tmp_path / "again"
    run_webvid(webvid, again, samples_per_shard=2, workers=0)
    assert folder_bytes(single) == folder_bytes(again)

    tasks = tmp_path / "tasks"
    for task in (2, 0):
        run_webvid(webvid, tasks, samples_per_shard=2, workers=0, task_index=task, num_tasks=3)
        assert not (tasks / "manifest.json").exists()  # task 1 has not run yet
    assert cli.main(["manifest", str(tasks)]) == 1  # refuses: chunk 1 is missing
    run_webvid(webvid, tasks, samples_per_shard=2, workers=0, task_index=1, num_tasks=3)
    assert folder_bytes(tasks) == folder_bytes(single)  # the last task wrote the manifest
    (tasks / "manifest.json").unlink()
    assert cli.main(["manifest", str(tasks)]) == 0
    assert folder_bytes(tasks) == folder_bytes(single)


def test_max_bytes_splits_a_shard_into_parts(webvid, tmp_path):
    out = tmp_path / "out"
    run_webvid(webvid, out, samples_per_shard=4, workers=0, max_bytes=40000)
    manifest = json.loads((out / "manifest.json").read_text())
    paths = [s["path"] for s in manifest["shards"]]
    assert len(paths) > 2 and "webvid-000000-p1.tar" in paths
    assert all(s["bytes"] <= 40000 or s["samples"] == 1 for s in manifest["shards"])
    assert manifest["total_samples"] == 7 and verify(out).ok
    keys = [m[0].split(".")[0] for p in paths for m in tar_members(out / p)]
    assert list(dict.fromkeys(keys)) == ["101", "102", "103", "104", "105", "106", "107"]  # row order


def test_rerun_with_other_options_is_refused(webvid, tmp_path, capsys):
    out = tmp_path / "out"
    run_webvid(webvid, out, samples_per_shard=4, workers=0)
    assert cli.main(webvid_argv(webvid, out, samples_per_shard=4, workers=0, frames=4)) == 2
    assert "frames: 8 there, 4 now" in capsys.readouterr().err


def test_verify_reports_damage(webvid, tmp_path, capsys):
    out = tmp_path / "out"
    run_webvid(webvid, out, samples_per_shard=4, workers=0)
    assert cli.main(["verify", str(out)]) == 0
    shard = out / "webvid-000000.tar"
    members = tar_members(shard)
    with tarfile.open(shard, "w") as tar:  # same sample count, one frame corrupted
        for name, *_, data in members:
            if name == "102.003.jpg":
                data = data[:30] + b"\xff\x00" * 40
            if name == "103.json":
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report = verify(out)
    text = "\n".join(report.problems)
    assert "102: frame 3 does not decode" in text
    assert "103: members" in text
    size = (out / "webvid-000001.tar").stat().st_size
    with open(out / "webvid-000001.tar", "ab") as f:
        f.write(b"\0" * 10240)
    assert f"webvid-000001.tar: {size + 10240} bytes, manifest says {size}" in "\n".join(verify(out).problems)
    assert cli.main(["verify", str(out)]) == 1
    (out / "manifest.json").unlink()
    assert "manifest.json is missing" in verify(out).problems[0]


def test_cc3m_tsv_and_csv_layouts(tmp_path):
    images = tmp_path / "training"
    urls = [f"http://img.example/{i}.jpg" for i in range(3)]
    for i, url in enumerate(urls):
        media.render_image(images / cc3m_image_name(url), size=(80 + 16 * i, 60))
    tsv = tmp_path / "Train_GCC-training.tsv"
    tsv.write_text(
        "".join(f"a photo number {i}\t{url}\n" for i, url in enumerate(urls))
        + "no url here\n"
        + f"same image again\t{urls[0]}\n"
    )
    out = tmp_path / "out"
    assert cli.main(shards_argv("cc3m", tsv=tsv, images_root=images, out=out, workers=0, short_side=32)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "image" and manifest["frames_per_sample"] == 1
    assert manifest["total_samples"] == 4 and manifest["failed"] == {"missing_field": 1}
    data = {m[0]: m[5] for m in tar_members(out / "cc3m-000000.tar")}
    assert sorted(n for n in data if n.startswith("000000001.")) == [
        "000000001.000.jpg",
        "000000001.json",
        "000000001.txt",
    ]
    info = json.loads(data["000000001.json"])
    assert info["source"]["id"] == cc3m_image_name(urls[1]) and (info["width"], info["height"]) == (96, 60)
    assert simplejpeg.decode_jpeg(data["000000001.000.jpg"]).shape == (32, 52, 3)
    assert verify(out).ok

    csv_table = tmp_path / "Validation_GCC.csv"
    csv_table.write_text("caption,thumbnailUrl\n" + "".join(f"val {i},{u}\n" for i, u in enumerate(urls)))
    out2 = tmp_path / "out2"
    assert cli.main(shards_argv("cc3m", table=csv_table, images_root=images, out=out2, workers=0)) == 0
    assert json.loads((out2 / "manifest.json").read_text())["total_samples"] == 3


def _msrvtt(root: Path) -> Path:
    vids = ["video0", "video1", "video2", "video3"]
    for v in vids:
        media.render_clip(root / "videos" / "all" / f"{v}.mp4", 1.0, (64, 48), 10)
    anns = [
        {"image_id": v, "caption": f"{v} caption {c}", "id": i * 10 + c} for i, v in enumerate(vids) for c in range(3)
    ]
    (root / "annotation").mkdir(parents=True)
    (root / "annotation" / "MSR_VTT.json").write_text(json.dumps({"annotations": anns}))
    lists = root / "high-quality" / "structured-symlinks"
    lists.mkdir(parents=True)
    for name, ids in {
        "train_list_jsfusion.txt": vids[:2],
        "val_list_jsfusion.txt": vids[2:],
        "train_list_miech.txt": vids[:3],
        "test_list_miech.txt": vids[3:],
    }.items():
        (lists / name).write_text("\n".join(ids) + "\n")
    (root / "jsfusion_val_caption_idx.pkl").write_bytes(pickle.dumps({"video2": np.int64(2), "video3": 1}))
    return root


def test_msrvtt_train_and_1k_a_test(tmp_path):
    root = _msrvtt(tmp_path / "MSRVTT")
    for split in ("train", "test"):
        argv = shards_argv("msrvtt", root=root, split=split, cut="jsfusion", out=tmp_path / split, workers=0)
        assert cli.main(argv) == 0
    train = {m[0]: m[5] for m in tar_members(tmp_path / "train" / "msrvtt_jsfusion_train-000000.tar")}
    assert json.loads(train["video1.json"])["captions"] == [f"video1 caption {c}" for c in range(3)]
    test = {m[0]: m[5] for m in tar_members(tmp_path / "test" / "msrvtt_jsfusion_test-000000.tar")}
    assert test["video2.txt"].decode() == "video2 caption 2"
    info = json.loads(test["video2.json"])
    assert info["captions"] == ["video2 caption 2", "video2 caption 0", "video2 caption 1"]
    assert info["extra"]["caption_index"] == 2
    assert test["video3.txt"].decode() == "video3 caption 1"
    argv = shards_argv("msrvtt", root=root, split="train", cut="miech", out=tmp_path / "miech", workers=0)
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "miech" / "manifest.json").read_text())["total_samples"] == 3


def test_msrvtt_caption_index_pickle_is_restricted(tmp_path):
    root = _msrvtt(tmp_path / "MSRVTT")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "jsfusion_val_caption_idx.pkl").write_bytes(pickle.dumps({"video2": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        make_shards(
            __import__("shard_tools.sources", fromlist=["x"]).msrvtt_rows(root, "test"),
            tmp_path / "out",
            ShardOptions(name="m"),
            RunOptions(progress=False),
        )


def test_csv_jsonl_parquet_with_pass_through_columns(tmp_path):
    clips = tmp_path / "clips"
    media.render_clip(clips / "a.mp4", 1.0, (64, 48), 10)
    media.render_clip(clips / "b.mp4", 1.0, (64, 48), 10)
    records = [
        {"file": "clips/a.mp4", "text": "first", "id": "v1.a/x", "score": 0.5, "lang": "en"},
        {"file": "clips/b.mp4", "text": "second", "id": "v2", "score": 1.5, "lang": "de"},
    ]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "{not json\n")
    with open(tmp_path / "t.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]), delimiter="\t")
        w.writeheader()
        w.writerows(records)
    results = {}
    for table in ("t.parquet", "t.jsonl", "t.tsv"):
        out = tmp_path / table.replace(".", "_")
        columns = {"path_col": "file", "caption_col": "text", "key_col": "id"}
        assert cli.main(shards_argv("csv", table=tmp_path / table, **columns, out=out, workers=0)) == 0
        data = {m[0]: m[5] for m in tar_members(out / "csv-000000.tar")}
        key = next(name for name in data if name.endswith(".json")).split(".")[0]
        assert key.startswith("v1_a_x-") and len(key) == len("v1_a_x-") + 10  # dots, slashes out; hash in
        info = json.loads(data[f"{key}.json"])
        assert info["source"]["id"] == "v1.a/x" and info["captions"] == ["first"]
        results[table] = info["extra"]
        assert verify(out).ok
    assert results["t.parquet"] == {"score": 0.5, "lang": "en"}
    assert results["t.jsonl"] == {"score": 0.5, "lang": "en"}
    assert results["t.tsv"] == {"score": "0.5", "lang": "en"}
    manifest = json.loads((tmp_path / "t_jsonl" / "manifest.json").read_text())
    assert manifest["failed"] == {"bad_row": 1} and manifest["input_rows"] == 3


def test_sample_json_is_strict_json_whatever_the_pass_through_values():
    """NaN / inf in a table's extra columns (an empty numeric parquet cell) become null: strict JSON parsers
    (and other languages' readers of the shards) reject the bare NaN Python's json writes by default."""
    from types import SimpleNamespace

    from shard_tools.writer import sample_members

    row = SimpleNamespace(
        key="k",
        kind="image",
        captions=["c"],
        source=lambda: {"path": "a.jpg", "size": float("inf")},
        extra={"score": float("nan"), "neg": float("-inf"), "ok": 1.5, "n": [float("nan"), 2]},
    )
    decoded = SimpleNamespace(
        jpegs=[b"\xff\xd8"],
        meta={"frame_indices": [0], "frame_timestamps": [0.0], "duration": 0.0, "fps": 0.0, "width": 2, "height": 2},
    )
    data = dict(sample_members(row, 0, decoded))["k.json"]

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    info = json.loads(data, parse_constant=refuse)
    assert info["extra"] == {"score": None, "neg": None, "ok": 1.5, "n": [None, 2]}
    assert info["source"] == {"path": "a.jpg", "size": None}
