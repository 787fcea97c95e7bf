"""`make install`'s browser step (tools/install_chromium.sh) on a PATH of stand-ins for
apt-get, id and chromium, which record how they were called: chromium comes from apt-get
only when it is missing, apt-get exists and we are root; Playwright comes from the dev extra."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "install_chromium.sh"


def stand_in(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def run(tmp_path: Path, *, uid: int, apt: bool, chromium: bool) -> tuple[int, str, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    stand_in(bin_dir, "id", f'[ "$1" = -u ] && echo {uid}')
    if apt:
        stand_in(
            bin_dir,
            "apt-get",
            f'echo "apt-get $*" >> {log}; echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> {log}',
        )
    if chromium:
        stand_in(bin_dir, "chromium", f'echo "chromium $*" >> {log}')
    proc = subprocess.run(
        ["/bin/sh", str(SCRIPT)],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, proc.stderr, calls


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs /bin/sh")
def test_chromium_is_installed_by_apt_get_only_when_missing_and_root(tmp_path: Path) -> None:
    rc, err, calls = run(tmp_path / "a", uid=0, apt=True, chromium=False)
    assert rc == 0 and err == ""
    assert calls == [
        "apt-get update -qq",
        "DEBIAN_FRONTEND=",
        "apt-get install -y -qq chromium",
        "DEBIAN_FRONTEND=noninteractive",
    ]
    # Already there: nothing runs, not even the browser.
    assert run(tmp_path / "b", uid=0, apt=True, chromium=True) == (0, "", [])
    # Not root, or no apt-get: nothing installed, and it says why (the tests then skip).
    rc, err, calls = run(tmp_path / "c", uid=1000, apt=True, chromium=False)
    assert (rc, calls) == (0, []) and "as root" in err
    rc, err, calls = run(tmp_path / "d", uid=0, apt=False, chromium=False)
    assert (rc, calls) == (0, []) and "no apt-get" in err


def test_an_apt_get_that_fails_fails_the_install(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in(bin_dir, "id", "echo 0")
    stand_in(bin_dir, "apt-get", "exit 100")
    proc = subprocess.run(
        ["/bin/sh", str(SCRIPT)], env={"PATH": str(bin_dir)}, capture_output=True, timeout=60
    )
    assert proc.returncode == 100


def test_make_install_runs_it_and_installs_playwright() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(STAMP):", 1)[1].split("\ninstall:", 1)[0]
    assert "sh tools/install_chromium.sh" in recipe
    extras = re.search(r"pip install -q -e '\.\[([a-z,]+)\]'", recipe)
    assert extras is not None
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = [project["optional-dependencies"][e] for e in extras.group(1).split(",")]
    assert any(req.startswith("playwright") for reqs in dev for req in reqs)
