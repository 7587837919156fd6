"""Output files on a shared, full or read-only disk: modes, disk full (real tmpfs and a file-size
limit), and tiles that must never be committed half-written."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from pathlib import Path

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
