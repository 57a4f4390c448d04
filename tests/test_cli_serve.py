"""`coordcore` and `coordcore serve` as users meet them: --version, help lines, start-up
errors (one prefix, one exit status, nothing created), --config files."""
from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from tests.server.ccserver import ServerProc

from coordcore import __version__
from coordcore.cli import build_parser
from coordcore.cli import main as cli_main
from coordcore.server import cli as serve_cli


def coordcore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordcore.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


_MARKUP = re.compile(r"``|:class:|:func:|:mod:|:meth:|\*\*")


def test_every_option_has_a_help_line_and_no_text_has_markup() -> None:
    seen = set()
    for parser in parsers(build_parser()):
        seen.add(parser.prog)
        assert parser.description and not _MARKUP.search(parser.description), parser.prog
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:  # each subcommand's line in its parent's help
                    assert choice.help and len(choice.help.split()) >= 3, (parser.prog, choice.dest)
                continue
            text = re.sub(r"\(default[^)]*\)", "", action.help or "").strip()
            assert len(text.split()) >= 2, f"{parser.prog} {action.option_strings or action.dest}: {action.help!r}"
            assert not _MARKUP.search(action.help or ""), (parser.prog, action.help)
    assert {"coordcore", "coordcore id", "coordcore serve", "coordcore locks repair"} <= seen


def test_version() -> None:
    result = coordcore("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"coordcore {__version__}", result


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("via", [["-m", "coordcore.cli", "serve"], ["-m", "coordcore.server"]])
def test_a_port_in_use_fails_before_the_data_dir_exists(tmp_path: Path, taken_port: int, via: list[str]) -> None:
    data = tmp_path / "never"
    result = subprocess.run([sys.executable, *via, "--port", str(taken_port), "--data-dir", str(data)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and result.stderr == \
        f"coordcore serve: error: cannot listen on 127.0.0.1:{taken_port}: the port is in use\n", result
    assert not data.exists()


def in_process(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit status, stderr) of a CLI main run here: argparse's errors exit, others return."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


MAINS = [lambda argv: cli_main(["serve", *argv]), serve_cli.main]


@pytest.mark.parametrize("flags", [["--port", "70000"], ["--max-args", "1"], ["--port", "abc"],
                                   ["--host", "no-such-host.invalid", "--port", "7"],
                                   ["--tls-cert", "/nonexistent.pem"]])
def test_every_start_up_error_has_one_prefix_and_status(tmp_path: Path, flags: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "never"
    for main in MAINS:
        status, err = in_process(main, ["--data-dir", str(data), *flags], capsys)
        assert status == 2 and "coordcore serve: error: " in err and "Traceback" not in err, err
    assert not data.exists()


def test_config_file_settings_and_command_line_overrides(tmp_path: Path) -> None:
    config = tmp_path / "coordcore.toml"
    config.write_text('max-connections = 77\nmax-args = 1\nlog-level = "warning"\nunsafe-no-fsync = true\n'
                      f'data-dir = "{tmp_path / "from-file"}"\nidle-timeout = 5\n')
    srv = ServerProc(tmp_path / "from-flags", "--config", str(config), "--max-args", "16").start()
    try:
        got = redis.Redis(port=srv.port, decode_responses=True).config_get("*")
        assert got["max-connections"] == "77" and got["max-args"] == "16" and got["fsync"] == "no"
        assert got["log-level"] == "warning" and got["idle-timeout"] == "5.0"
        assert got["data-dir"] == str(tmp_path / "from-flags") and not (tmp_path / "from-file").exists()
    finally:
        srv.kill()


@pytest.mark.parametrize(("text", "why"), [
    ("bogus = 1\n", "unknown key 'bogus'"),
    ("max-conections = 1\n", "did you mean 'max-connections'"),
    ("max_connections = 1\n", "did you mean 'max-connections'"),
    ('port = "7379"\n', "key 'port' takes an integer"),
    ("port = true\n", "key 'port' takes an integer"),
    ("insecure = 1\n", "key 'insecure' takes true or false"),
    ('log-level = "loud"\n', "key 'log-level' takes one of debug"),
    ("config = 'x.toml'\n", "unknown key 'config'"),
    ("announce-port = true\n", "unknown key 'announce-port'"),
    ("port = [\n", "not valid TOML"),
])
def test_bad_config_files_are_refused_clearly(tmp_path: Path, text: str, why: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    data = tmp_path / "never"
    for main in MAINS:
        status, err = in_process(main, ["--config", str(config), "--data-dir", str(data)], capsys)
        assert status == 2 and "coordcore serve: error: --config" in err and why in err, err
    assert not data.exists()


def test_a_bad_config_file_as_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("bogus = 1\n")
    result = coordcore("serve", "--config", str(tmp_path / "c.toml"))
    assert result.returncode == 2 and "coordcore serve: error: --config" in result.stderr, result
    result = coordcore("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "No such file" in result.stderr and "Traceback" not in result.stderr


def test_every_flag_has_a_key_that_takes_its_default() -> None:
    """A file that sets every key to its flag's default parses to what no file gives."""
    plain = argparse.ArgumentParser()
    serve_cli.add_arguments(plain)
    keys = serve_cli.settings_keys(plain)
    flags = {o.removeprefix("--") for a in plain._actions for o in a.option_strings if o.startswith("--")}
    assert set(keys) == flags - {"help", "config", "announce-port", "exit-with-stdin"}
    lines = []
    for key, action in keys.items():
        value = action.default
        if isinstance(action, argparse._StoreTrueAction):
            lines.append(f"{key} = false")
        elif value is not None:
            lines.append(f"{key} = {value!r}".replace("'", '"') if not isinstance(value, Path)
                         else f'{key} = "{value}"')
    with_file = argparse.ArgumentParser()
    serve_cli.add_arguments(with_file)
    path = Path(__file__).parent / "__config_defaults.toml"
    try:
        path.write_text("\n".join(lines) + "\n")
        assert serve_cli.parse(with_file, ["--config", str(path)]) == \
            argparse.Namespace(**{**vars(plain.parse_args([])), "config": path})
    finally:
        path.unlink()
