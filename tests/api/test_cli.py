"""Command line: bad configuration fails fast with one clear line and exit code 2."""
import subprocess

import pytest


def _run(binary, tmp_path, *args):
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=20,
                          cwd=tmp_path, stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "API_KEYS": "k"})


@pytest.mark.parametrize("flag,value", [
    ("--port", "abc"),
    ("--port", "70000"),
    ("--rate-limit-default", "-1"),
    ("--rate-limit-heartbeat", "x"),
    ("--sweep-interval-s", "0"),
    ("--machine-offline-after-s", "0"),
    ("--log-format", "xml"),
])
def test_bad_flag_value(statetrack_bin, tmp_path, flag, value):
    p = _run(statetrack_bin, tmp_path, "serve", "--host", "127.0.0.1", "--db",
             str(tmp_path / "x.db"), flag, value)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    assert flag in lines[0], f"the message should name the option as typed ({flag}): {lines[0]}"
    assert "listening" not in p.stdout


def test_unknown_option(statetrack_bin, tmp_path):
    p = _run(statetrack_bin, tmp_path, "serve", "--no-such-option", "1")
    assert p.returncode == 2
    assert "--no-such-option" in p.stderr


def test_version(statetrack_bin, tmp_path):
    p = _run(statetrack_bin, tmp_path, "version")
    assert p.returncode == 0
    assert p.stdout.startswith("statetrack "), p.stdout
