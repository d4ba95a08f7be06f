"""make-shards csv with time spans: every span a sample with the exact source frames its span holds.

The test videos encode the frame index in every pixel (grey level 4 * index, lossless H.264 or intra-only
MJPEG), so a stored JPEG names the source frame it came from. Every table row is accounted for: samples
plus failed rows equal the rows the source yields.
"""

import csv
import http.server
import json
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
import simplejpeg

from pipeline.demo.render import ffmpeg_exe
from shard_tools import cli, sources
from shard_tools.api import RunOptions, ShardOptions, make_shards
from shard_tools.decode import decode_spans
from shard_tools.spans import parse_seconds
from shard_tools.verify import verify

FPS = 10
LEVEL = 4  # grey level step per frame index: 60 frames fit 0..236 with room for codec rounding


def counter_video(path: Path, frames: int, codec: str = "libx264", gop: int = 8) -> Path:
    """A 32x24 video whose frame i is uniformly grey at level 4 * i."""
    data = b"".join(bytes([LEVEL * i]) * (32 * 24) for i in range(frames))
    codec_args = ["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", "-g", str(gop)]
    if codec == "mjpeg":
        codec_args = ["-c:v", "mjpeg", "-q:v", "2", "-pix_fmt", "yuvj420p"]
    command = [ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray", "-s", "32x24"]
    command += ["-r", str(FPS), "-i", "-", *codec_args, str(path)]
    subprocess.run(command, input=data, check=True)
    return path


def frame_number(jpeg: bytes) -> int:
    return round(float(simplejpeg.decode_jpeg(jpeg).mean()) / LEVEL)


def samples_of(out: Path) -> dict:
    """{key: (json, [source frame index read from each stored frame's pixels])} of every shard in `out`."""
    samples = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            if name.endswith(".json"):
                key = name[: -len(".json")]
                meta = json.loads(data)
                frames = [frame_number(members[f"{key}.{i:03d}.jpg"]) for i in range(meta["num_frames"])]
                samples[key] = (meta, frames)
    return samples


def failures_of(out: Path) -> dict:
    return {
        f["key"]: (f["reason"], f["detail"])
        for p in sorted(out.glob("*.stats.json"))
        for f in json.loads(p.read_text())["failures"]
    }


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def run_cli(*argv) -> None:
    assert cli.main([*map(str, argv), "--no-progress"]) == 0


class CountingSpanDecoder:
    """decode_spans, recording every call's (file name, spans): one call is one open of the video."""

    def __init__(self):
        self.calls = []

    def __call__(self, path, spans, spec):
        self.calls.append((Path(path).name, list(spans)))
        return decode_spans(path, spans, spec)


def test_times_in_every_table_form():
    assert parse_seconds(12) == 12.0
    assert parse_seconds("62.5") == 62.5
    assert parse_seconds("0:00:13.113") == pytest.approx(13.113)
    assert parse_seconds("00:01:02.500") == pytest.approx(62.5)
    assert parse_seconds("1:02") == 62.0
    assert parse_seconds("1:00:00") == 3600.0
    assert parse_seconds("00.00.49.560") == pytest.approx(49.56)
    for bad in ("", "abc", "1:75", "-3", "nan", "inf", None, [1], True):
        with pytest.raises(ValueError):
            parse_seconds(bad)


# span (table form) -> the source frames its K=4 segment middles must be, at 10 fps
START_END_CASES = [
    ("0", "1", [0, 3, 5, 8]),  # frames 0..9
    ("0:00:00.500", "0:00:02.000", [6, 9, 13, 17]),  # frames 5..19 (overlaps the first span)
    ("00:00.8", "00:03.2", [10, 16, 22, 28]),  # frames 8..31, MM:SS form, overlaps both
    ("0:00:05.500", "0:00:09.000", [55, 56, 57, 58]),  # past the end (6 s): clipped to frames 55..59
    ("1.23", "1.24", [12, 12, 12, 12]),  # shorter than a frame: the frame on screen at its start
    ("3", "3.3", [30, 31, 31, 32]),  # 3 frames for K=4: frames repeat
]
BAD_START_END = [
    ("7", "8", "span_out_of_range"),  # starts after the video's end
    ("2", "2", "bad_span"),  # end == start
    ("4", "3", "bad_span"),  # end before start
    ("0:00:xx", "1", "bad_span"),  # unparsable
    ("", "1", "bad_span"),  # empty
]


@pytest.mark.parametrize("codec,suffix", [("libx264", "mp4"), ("mjpeg", "avi")])
def test_start_end_columns_store_the_exact_frames_of_each_span(tmp_path, codec, suffix):
    counter_video(tmp_path / f"a.{suffix}", 60, codec)
    counter_video(tmp_path / f"b.{suffix}", 40, codec)
    table_rows = [["a", f"a.{suffix}", s, e, f"clip {i}"] for i, (s, e, _) in enumerate(START_END_CASES)]
    # a second video between the first's rows: its rows are numbered on their own, the first's keep counting
    table_rows.insert(2, ["b", f"b.{suffix}", "0", "4", "b first"])
    table_rows += [["a", f"a.{suffix}", s, e, "bad"] for s, e, _ in BAD_START_END]
    table_rows.append(["b", f"b.{suffix}", "3:59", "4:00", "b after its end"])
    table = write_csv(tmp_path / "clips.csv", ["video", "file", "start", "end", "caption"], table_rows)

    counting = CountingSpanDecoder()
    rows = sources.table_rows(table, path_col="file", key_col="video", start_col="start", end_col="end")
    options = ShardOptions(name="spans", frames=4, samples_per_shard=5)
    report = make_shards(rows, tmp_path / "out", options, RunOptions(workers=0, progress=False, span_decoder=counting))

    samples, failures = samples_of(tmp_path / "out"), failures_of(tmp_path / "out")
    assert len(samples) + len(failures) == len(table_rows) == report.input_rows
    assert report.manifest["total_samples"] == len(samples)
    for i, (start, end, frames) in enumerate(START_END_CASES):
        meta, stored = samples[f"a_{i}"]
        assert stored == frames == meta["frame_indices"], (start, end)
        assert meta["video_key"] == "a" and meta["captions"] == [f"clip {i}"]
        assert meta["source"]["id"] == "a"
        span_start = parse_seconds(start)
        assert meta["span"][0] == pytest.approx(span_start)
        assert meta["frame_timestamps"] == pytest.approx([max(0.0, f / FPS - span_start) for f in frames], abs=1e-6)
    assert samples["a_3"][0]["span"] == [5.5, 6.0] and samples["a_3"][0]["span_end_clipped"] is True
    assert samples["a_0"][0]["span_end_clipped"] is False and samples["a_0"][0]["duration"] == 1.0
    assert samples["b_0"][1] == [4, 14, 24, 34]
    first_bad = len(START_END_CASES)
    for j, (_, _, reason) in enumerate(BAD_START_END):
        assert failures[f"a_{first_bad + j}"][0] == reason
    assert failures["b_1"][0] == "span_out_of_range" and "b." in failures["b_1"][1]
    assert "clips.csv line" in failures[f"a_{first_bad + 3}"][1] and "0:00:xx" in failures[f"a_{first_bad + 3}"][1]
    # each video opened once, with all of its usable spans, wherever its rows are in the table
    assert sorted(name for name, _ in counting.calls) == [f"a.{suffix}", f"b.{suffix}"]
    spans_of_a = dict(counting.calls)[f"a.{suffix}"]
    assert len(spans_of_a) == len(START_END_CASES) + 1  # + the span past the end, which fails in the decoder


def test_start_end_layout_needs_the_video_key_column(tmp_path):
    table = write_csv(tmp_path / "t.csv", ["file", "start", "end", "caption"], [["a.mp4", "0", "1", "x"]])
    with pytest.raises(ValueError, match="--key-col"):
        list(sources.table_rows(table, path_col="file", start_col="start", end_col="end"))
    with pytest.raises(ValueError, match="together"):
        list(sources.table_rows(table, path_col="file", start_col="start"))


def panda_table(tmp_path: Path, media_col_values: dict) -> tuple[Path, int]:
    """A Panda-70M style table (one row per video, parallel span and caption lists) and its span-row count."""
    rows = [
        [
            "vidA",
            media_col_values["vidA"],
            "[['0:00:00.000', '0:00:01.000'], ['0:00:00.500', '0:00:02.000'], ['0:00:04.000', '0:00:05.000']]",
            "['a one', \"a two\", 'a three']",
            "[0.4, 0.5, 0.6]",
        ],
        [
            "vidB",
            media_col_values["vidB"],
            "[('0:00:01.000', '0:00:03.000'), ['0:00:02.000', '0:00:01.000'], [5.5, 9], ['x', '0:00:01']]",
            "['b one', 'b two', 'b three', 'b four']",
            "[0.4, 0.5, 0.6, 0.7]",
        ],
        ["vidC", media_col_values["vidA"], "[['0:00:00.000', '0:00:01.000']]", "['c one', 'c two']", "[]"],
        ["vidD", media_col_values["vidA"], "[['0:00:00.000', '0:00:01.000'", "['d one']", "[]"],
    ]
    header = ["videoID", "url", "timestamp", "caption", "matching_score"]
    return write_csv(tmp_path / "panda70m_testing.csv", header, rows), 3 + 4 + 1 + 1


def check_panda_output(out: Path, span_rows: int) -> None:
    samples, failures = samples_of(out), failures_of(out)
    assert len(samples) + len(failures) == span_rows
    expected = {
        "vidA_0": [0, 3, 5, 8],
        "vidA_1": [6, 9, 13, 17],
        "vidA_2": [40, 43, 45, 48],
        "vidB_0": [12, 17, 22, 27],
    }
    assert {key: frames for key, (_, frames) in samples.items()} == expected
    assert all(meta["frame_indices"] == expected[key] for key, (meta, _) in samples.items())
    assert samples["vidA_1"][0]["captions"] == ["a two"] and samples["vidA_1"][0]["video_key"] == "vidA"
    assert samples["vidA_0"][0]["extra"] == {"matching_score": "[0.4, 0.5, 0.6]"}
    assert failures["vidB_1"][0] == "bad_span" and failures["vidB_3"][0] == "bad_span"
    assert failures["vidB_2"][0] == "span_out_of_range"
    assert failures["vidC"][0] == "bad_span" and "1 spans but caption lists 2" in failures["vidC"][1]
    assert failures["vidD"][0] == "bad_span" and "not a list literal" in failures["vidD"][1]


def test_span_list_layout_panda70m_through_the_command_line(tmp_path):
    counter_video(tmp_path / "A.mp4", 60)
    counter_video(tmp_path / "B.mp4", 40)
    table, span_rows = panda_table(tmp_path, {"vidA": "A.mp4", "vidB": "B.mp4"})
    out = tmp_path / "out"
    run_cli(
        "csv", "--table", table, "--path-col", "url", "--key-col", "videoID", "--spans-col", "timestamp",
        "--frames", "4", "--samples-per-shard", "4", "--workers", "1", "--out", out,
    )  # fmt: skip
    check_panda_output(out, span_rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_rows"] == span_rows
    assert manifest["total_samples"] + sum(manifest["failed"].values()) == span_rows
    assert verify(out).ok


def test_retry_failed_redoes_the_spans_of_a_video_that_was_missing(tmp_path):
    counter_video(tmp_path / "A.mp4", 60)
    table, span_rows = panda_table(tmp_path, {"vidA": "A.mp4", "vidB": "B.mp4"})
    common = ["csv", "--table", table, "--path-col", "url", "--key-col", "videoID", "--spans-col", "timestamp"]
    common += ["--frames", "4", "--workers", "0"]
    run_cli(*common, "--out", tmp_path / "out")
    failures = failures_of(tmp_path / "out")
    assert [key for key, (reason, _) in failures.items() if reason == "missing_file"] == ["vidB_0", "vidB_2"]
    counter_video(tmp_path / "B.mp4", 40)
    run_cli(*common, "--retry-failed", "--out", tmp_path / "out")
    check_panda_output(tmp_path / "out", span_rows)
    run_cli(*common, "--out", tmp_path / "clean")
    assert (tmp_path / "out" / "csv-000000.tar").read_bytes() == (tmp_path / "clean" / "csv-000000.tar").read_bytes()


def test_task_slicing_splits_a_video_at_chunk_boundaries_and_each_task_decodes_only_its_spans(tmp_path):
    counter_video(tmp_path / "a.mp4", 60)
    counter_video(tmp_path / "b.mp4", 60)
    spans = [("a", 0, 1), ("a", 1, 2), ("a", 2, 3), ("b", 0, 1), ("b", 3, 5), ("a", 4, 6)]
    table = write_csv(
        tmp_path / "t.csv",
        ["video", "file", "start", "end", "caption"],
        [[v, f"{v}.mp4", s, e, "c"] for v, s, e in spans],
    )

    def run(out, task_index, num_tasks):
        counting = CountingSpanDecoder()
        rows = sources.table_rows(table, path_col="file", key_col="video", start_col="start", end_col="end")
        run = RunOptions(workers=0, progress=False, task_index=task_index, num_tasks=num_tasks, span_decoder=counting)
        make_shards(rows, out, ShardOptions(name="s", frames=4, samples_per_shard=2), run)
        return counting.calls

    # chunks of 2 rows: 0 = a_0 a_1, 1 = a_2 b_0, 2 = b_1 a_3; task 0 has chunks 0 and 2, task 1 chunk 1
    calls0 = run(tmp_path / "sliced", 0, 2)
    calls1 = run(tmp_path / "sliced", 1, 2)
    assert sorted(calls0) == [("a.mp4", [(0.0, 1.0), (1.0, 2.0), (4.0, 6.0)]), ("b.mp4", [(3.0, 5.0)])]
    assert sorted(calls1) == [("a.mp4", [(2.0, 3.0)]), ("b.mp4", [(0.0, 1.0)])]
    run(tmp_path / "whole", 0, 1)
    for tar in sorted((tmp_path / "whole").glob("*.tar")):
        assert (tmp_path / "sliced" / tar.name).read_bytes() == tar.read_bytes()
    samples = samples_of(tmp_path / "sliced")
    assert sorted(samples) == ["a_0", "a_1", "a_2", "a_3", "b_0", "b_1"]
    assert samples["a_3"][1] == samples["a_3"][0]["frame_indices"] == [42, 47, 52, 57]


class _Videos(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    hits: dict = {}
    lock = threading.Lock()

    def do_GET(self):
        with self.lock:
            self.hits[self.path] = self.hits.get(self.path, 0) + 1
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def video_server(tmp_path):
    _Videos.files = {
        "/A.mp4": counter_video(tmp_path / "A.mp4", 60).read_bytes(),
        "/B.mp4": counter_video(tmp_path / "B.mp4", 40).read_bytes(),
    }
    _Videos.hits = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Videos)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_fetches_each_source_video_once_for_all_its_spans(tmp_path, video_server):
    table, span_rows = panda_table(tmp_path, {"vidA": f"{video_server}/A.mp4", "vidB": f"{video_server}/B.mp4"})
    common = ["--url-col", "url", "--key-col", "videoID", "--spans-col", "timestamp", "--frames", "4", "--download"]
    run_cli("csv", "--table", table, *common, "--workers", "0", "--out", tmp_path / "out")
    check_panda_output(tmp_path / "out", span_rows)
    assert _Videos.hits == {"/A.mp4": 1, "/B.mp4": 1}  # vidC/vidD name A too, but fail before any fetch

    # sliced: chunks of 2 span rows; vidA's spans (rows 0-2) straddle chunks 0 and 1, so each task fetches A
    _Videos.hits = {}
    for task in (0, 1):
        slicing = ["--samples-per-shard", "2", "--task-index", str(task), "--num-tasks", "2"]
        run_cli("csv", "--table", table, *common, *slicing, "--workers", "0", "--out", tmp_path / "sliced")
    # chunk 0 = vidA_0 vidA_1 (task 0), 1 = vidA_2 vidB_0 (task 1), 2 = vidB_1 vidB_2 (task 0), 3 = vidB_3 vidC
    assert _Videos.hits == {"/A.mp4": 2, "/B.mp4": 2}
    check_panda_output(tmp_path / "sliced", span_rows)
    assert sorted(p.name for p in (tmp_path / "sliced").iterdir() if p.name.startswith(".")) == []
