"""Bad input: one line naming the file and the problem, exit code 2, never a traceback."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m trainer ARGS` run in this process: the same `main`, its exit code and what it
    printed to stderr (a process per case spent ~2 s each on imports; `run_process` checks the
    real process)."""
    from trainer.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return subprocess.CompletedProcess(["python", "-m", "trainer", *args], code, "", stderr.getvalue())


def run_process(*args: str) -> subprocess.CompletedProcess:
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
    (("--methods", "tdm", "--beam-aware", "--beam-aware-warmup", "-1"), "--beam-aware-warmup"),
    (("--methods", "tdm", "--epochs", "0"), "--epochs must be at least 1"),
    (("--methods", "jtm", "--retrain-epochs", "0"), "--retrain-epochs"),
    (("--methods", "tdm", "--arity", "1"), "--arity"),
    (("--methods", "tdm", "--lr", "0"), "--lr must be positive"),
])
def test_bad_arguments(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u in range(3) for i in range(12)))
    assert_one_line_error(run_cli("compare", "--data", str(path), *args), fragment)


@pytest.mark.parametrize(("name", "content", "fmt"), [
    ("log.csv", b"", "auto"),
    ("log.csv", b"", "generic"),
    ("ub.csv", b"", "userbehavior"),
    ("u.data", b"", "auto"),
    ("ratings.dat", b"", "auto"),
    ("log.tsv", b"\n  \n\n", "auto"),
    ("log.csv.gz", None, "auto"),  # a gzip file holding no bytes
    ("log.parquet", b"", "auto"),
])
def test_an_empty_file_says_so(tmp_path: Path, name: str, content: bytes | None, fmt: str) -> None:
    import gzip

    from trainer.data.formats import read_log
    from trainer.errors import DataError

    path = tmp_path / name
    path.write_bytes(gzip.compress(b"") if content is None else content)
    with pytest.raises(DataError, match="the file is empty") as caught:
        read_log(path, fmt)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(("content", "fragment"), [(None, "no such file"), (b"", "the file is empty")])
def test_the_real_process_prints_one_line(tmp_path: Path, content: bytes | None, fragment: str) -> None:
    """The process itself, not only `main`: no log line or traceback besides the error."""
    path = tmp_path / "log.csv"
    if content is not None:
        path.write_bytes(content)
    assert_one_line_error(run_process("compare", "--data", str(path), "--methods", "pop"), str(path), fragment)


def test_train_names_the_methods_it_accepts(tmp_path: Path) -> None:
    """An unknown --method lists the valid ones; a baseline is pointed at compare, which accepts it."""
    from trainer.methods import METHODS, TRAINABLE

    assert set(TRAINABLE) < set(METHODS)
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\n1,2\n")
    out = str(tmp_path / "run")
    result = run_cli("train", "--data", str(path), "--method", "nosuch", "--out", out)
    assert_one_line_error(result, "unknown --method 'nosuch'", ", ".join(TRAINABLE))
    result = run_cli("train", "--data", str(path), "--method", "pop", "--out", out)
    assert_one_line_error(result, "compare --methods pop", ", ".join(TRAINABLE))


def _parsers() -> list[tuple[str, object]]:
    """(name, parser) of `python -m trainer`, each of its subcommands, and `python -m service`."""
    import argparse

    from service.cli import build_parser as service_parser
    from trainer.cli import build_parser

    top = build_parser()
    (commands,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    assert len(commands.choices) >= 9
    return [("trainer", top), *commands.choices.items(), ("service", service_parser())]


@pytest.mark.parametrize(("name", "parser"), _parsers(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_option_has_help_that_shows_its_default(name: str, parser) -> None:
    """Each option of each command's --help has a help text, and that text (as printed) states the
    default: appended by the formatter for a plain value, written out where the default is
    "the method's own" or "none". Flags (off by default) and required options need none."""
    import argparse

    formatter = parser._get_formatter()  # noqa: SLF001
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):  # noqa: SLF001
            continue
        assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
        shown = formatter._get_help_string(action) % {"default": action.default}  # noqa: SLF001
        flag = isinstance(action, argparse._StoreTrueAction)  # noqa: SLF001
        if action.option_strings and not action.required and not flag:
            assert "default" in shown, f"{name} {action.option_strings}: the help does not show the default"
    assert "%(default)" not in parser.format_help()


def _configurations() -> list[type]:
    """Every dataclass in trainer/ with a field that declares a flag (`trainer.config.option`)."""
    import dataclasses
    import importlib
    import pkgutil

    import trainer

    found = {}
    for info in pkgutil.walk_packages(trainer.__path__, "trainer."):
        if info.name.endswith("__main__"):
            continue
        for value in vars(importlib.import_module(info.name)).values():
            if (isinstance(value, type) and dataclasses.is_dataclass(value)
                    and any("option" in f.metadata for f in dataclasses.fields(value))):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def test_every_default_is_written_once_in_its_configuration() -> None:
    """A default is written in one place: the configuration field that declares its flag.

    - every flag is declared (with its help) by exactly one configuration field; other fields
      may follow it with their own method's default (YouTube-DNN's epochs), never with help;
    - on the command line such a flag has no default of its own (argparse.SUPPRESS: not given
      means the configuration's), and its help quotes the configuration's value;
    - every other option with a default is added by one `add_argument` call in trainer/cli.py."""
    import argparse
    import ast
    import dataclasses

    from trainer.config import _show, flag_of

    declaring: dict[str, list[str]] = {}
    defaults: dict[str, object] = {}
    following: set[str] = set()
    for config in _configurations():
        for spec in dataclasses.fields(config):
            if "option" not in spec.metadata:
                continue
            flag = flag_of(spec)
            if spec.metadata["option"].help is None:
                following.add(flag)
                continue
            declaring.setdefault(flag, []).append(f"{config.__qualname__}.{spec.name}")
            defaults[flag] = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
    assert {flag: where for flag, where in declaring.items() if len(where) > 1} == {}
    assert following <= set(declaring), following - set(declaring)

    seen_flags = set()
    for name, parser in _parsers():
        if name == "service":
            continue  # the service's flags are its settings (service.config)
        for action in parser._actions:  # noqa: SLF001
            if not action.option_strings or isinstance(action, argparse._HelpAction):  # noqa: SLF001
                continue
            flag = action.option_strings[0]
            if action.default is not argparse.SUPPRESS:
                unset = action.required or action.default is None or action.default is False
                assert unset or flag not in declaring, (name, flag, "a default beside its configuration's")
                continue
            assert flag in declaring, (name, flag)
            seen_flags.add(flag)
            if not isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
                option = next(f.metadata["option"] for c in _configurations() for f in dataclasses.fields(c)
                              if "option" in f.metadata and flag_of(f) == flag and f.metadata["option"].help)
                shown = (option.show or _show)(defaults[flag])
                assert f"(default {shown}" in action.help, (name, flag, action.help)
    assert seen_flags == set(declaring), set(declaring) - seen_flags

    source = (ROOT / "trainer" / "cli.py").read_text()
    written: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            if default is None or (isinstance(default, ast.Constant) and default.value in (None, False)):
                continue  # no default to write twice
            for arg in node.args:
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
                    written[arg.value] = written.get(arg.value, 0) + 1
    assert {flag: n for flag, n in written.items() if n > 1} == {}
