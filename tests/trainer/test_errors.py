"""Bad input: one line naming the file and the problem, exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    assert_one_line_error(run_cli("compare", "--data", str(missing), "--methods", "pop"), str(missing), "no such file")


def test_missing_required_column(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,timestamp\n1,2\n")
    assert_one_line_error(run_cli("compare", "--data", str(path), "--format", "generic", "--methods", "pop"),
                          str(path), "item")


def test_non_numeric_id_in_numeric_format(tmp_path: Path) -> None:
    path = tmp_path / "ub.csv"
    path.write_text("1,10,100,pv,5\nabc,11,100,buy,6\n")
    assert_one_line_error(run_cli("compare", "--data", str(path), "--format", "userbehavior", "--methods", "pop"),
                          str(path), "line 2", "'user'", "abc")


def test_non_numeric_movielens(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\t4\n1\tx\t3\t4\n")
    assert_one_line_error(run_cli("compare", "--data", str(path), "--methods", "pop"), "line 2", "'item'")


def test_empty_after_filtering(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\n1,2\n1,3\n2,4\n")
    assert_one_line_error(run_cli("compare", "--data", str(path), "--methods", "pop"), str(path), ">= 10")


def test_undetectable_format(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("hello world\n")
    assert_one_line_error(run_cli("compare", "--data", str(path), "--methods", "pop"), "--format")


@pytest.mark.parametrize("args, fragment", [
    (("--methods", "pop,magic"), "unknown method"),
    (("--m", "0"), "--m"),
    (("--methods", "tdm", "--beam-aware-beam", "8"), "need --beam-aware"),
    (("--methods", "tdm", "--beam-aware", "--beam-aware-min-items", "0"), "--beam-aware-min-items"),
    (("--methods", "tdm", "--beam-aware", "--beam-aware-share", "1.5"), "--beam-aware-share"),
    (("--methods", "tdm", "--beam-aware", "--beam-aware-beam", "0"), "--beam-aware-beam"),
])
def test_bad_arguments(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u in range(3) for i in range(12)))
    assert_one_line_error(run_cli("compare", "--data", str(path), *args), fragment)
