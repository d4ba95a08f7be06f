"""foundation/fsutil.py: atomic writes leave files with the mode an ordinary open() gives (0666 less the
umask), whatever the writer did to the temporary file, and never a half-written file."""

import os
import stat

import pytest

from foundation import fsutil


def _replace_with_private_file(tmp):
    """What safetensors' save_file does: write its own temp file (mode 0600) and rename it over ours."""
    other = tmp.with_name(tmp.name + ".writer")
    fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"weights")
    os.close(fd)
    os.replace(other, tmp)


WRITERS = {
    "write_bytes": lambda tmp: tmp.write_bytes(b"data"),
    "replace_with_0600_file": _replace_with_private_file,
    "chmod_0600": lambda tmp: (tmp.write_bytes(b"data"), os.chmod(tmp, 0o600)),
}


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077, 0o027])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_atomic_path_gives_the_umask_mode_whatever_the_writer_did(tmp_path, umask, writer):
    old = os.umask(umask)
    try:
        assert fsutil.current_umask() == umask
        final = tmp_path / "weights.safetensors"
        with fsutil.atomic_path(final) as tmp:
            WRITERS[writer](tmp)
        assert stat.S_IMODE(final.stat().st_mode) == 0o666 & ~umask
        fsutil.atomic_write_json(tmp_path / "export.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "export.json").stat().st_mode) == 0o666 & ~umask
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "weights.safetensors"]


def test_safetensors_export_is_readable_by_the_group(tmp_path):
    """The reported case: weights exported with save_file through atomic_path came out 0600."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with fsutil.atomic_path(tmp_path / "weights.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "weights.safetensors").stat().st_mode) == 0o644


def test_a_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with fsutil.atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
