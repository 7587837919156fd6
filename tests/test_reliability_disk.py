"""Output files on a shared, full or read-only disk: modes, disk full (real tmpfs and a file-size
limit), and tiles that must never be committed half-written."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid

import pytest

from reliability_util import assert_no_partial_output, assert_user_error, cli, make_pairs, sha_tree


def test_outputs_get_umask_mode_not_mkstemp_0600(tmp_path):
    img, msk = make_pairs(tmp_path, n=1)
    r = cli("data", "import-pairs", img, msk, "--tile", 16, "--out", tmp_path / "out")
    assert r.rc == 0, r.stderr
    expected = 0o666 & ~_umask()
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {expected}


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 40 KiB tmpfs (root with mount rights only; skipped elsewhere)."""
    mnt = tmp_path / f"full-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _import(img, msk, out, **env):
    return cli("data", "import-pairs", img, msk, "--tile", 16, "--out", out, runner=bool(env), **env)


def test_disk_full_on_real_tmpfs_then_resume(tmp_path, tiny_tmpfs):
    """ENOSPC mid-import: one line naming the file, exit 2, every committed tile whole (GDAL used to leave
    0-byte tiles renamed into place and journaled as done), and a rerun with space finishes the same dataset."""
    img, msk = make_pairs(tmp_path, n=4)
    out = tiny_tmpfs / "out"
    r = _import(img, msk, out)
    assert_user_error(r, str(tiny_tmpfs), "no space left")
    assert_no_partial_output(out, strict=False)
    ref = _import(img, msk, tmp_path / "ref")
    assert ref.rc == 0, ref.stderr
    # "Free space": move the unfinished dataset to a roomy disk and rerun the same command there.
    moved = tmp_path / "moved"
    subprocess.run(["cp", "-a", str(out), str(moved)], check=True)
    r2 = _import(img, msk, moved)
    assert r2.rc == 0, r2.stderr
    assert sha_tree(moved) == sha_tree(tmp_path / "ref")


def test_file_size_limit_efbig(tmp_path):
    """The same contract with RLIMIT_FSIZE (works unprivileged): writes fail with EFBIG."""
    img, msk = make_pairs(tmp_path, n=2)
    r = _import(img, msk, tmp_path / "out", TS_FSIZE="1500")
    assert_user_error(r, "out", "no space left")
    assert_no_partial_output(tmp_path / "out", strict=False)


def test_disk_full_in_any_library_write_is_one_line(tmp_path, monkeypatch, capsys):
    """ENOSPC raised outside terrasynth's own writers (e.g. torch.save) still ends as one line, exit 2."""
    import errno

    from terrasynth import cli as cli_mod
    from terrasynth.commands import data as data_cmd

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ckpt.pt"))

    monkeypatch.setattr(data_cmd, "cmd_info", full)
    assert cli_mod.main(["data", "info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ckpt.pt" in err[0] and "no space left" in err[0]


def test_output_piped_into_head_is_not_a_traceback(tmp_path):
    """``terrasynth data info DIR | head -1``: the closed pipe ends the command quietly."""
    from terrasynth.data.importers import PairImportConfig, import_pairs

    from reliability_util import env

    img, msk = make_pairs(tmp_path, n=1)
    import_pairs(img, msk, PairImportConfig(tile=16), tmp_path / "ds")
    import sys

    p = subprocess.run(f"'{sys.executable}' -m terrasynth data info '{tmp_path / 'ds'}' | head -c 10",
                       shell=True, capture_output=True, text=True, env=env())  # fmt: skip
    assert p.stdout == "dataset   " and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
