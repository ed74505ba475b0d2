"""The README's runnable blocks (a ```bash block right after ``<!-- runnable -->``), run line by
line on a fresh directory: ``.venv`` is this interpreter's environment, ``experiments/`` holds
copies of the repository's experiment files, so every run directory is new."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BLOCK = re.compile(r"<!-- runnable -->\n```bash\n(.*?)```", re.S)


def runnable_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [line.split(" #")[0].strip() for block in BLOCK.findall(text)
            for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_readme_has_a_runnable_block():
    lines = runnable_lines()
    assert lines and all(line.startswith(".venv/bin/") for line in lines)


@pytest.mark.slow
def test_readme_runnable_blocks_work_on_a_fresh_run_directory(tmp_path):
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (tmp_path / "experiments").mkdir()
    for f in (ROOT / "experiments").glob("*.yaml"):
        shutil.copy(f, tmp_path / "experiments" / f.name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for line in runnable_lines():
        res = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True, env=env,
                             timeout=1200)
        assert res.returncode == 0, f"{line}\n{res.stderr[-3000:]}"
        if "--add 10" in line:  # the demo space holds 10 configurations: said in one line
            assert "--add 10: the search space has 10 distinct configurations" in res.stderr
    assert (tmp_path / "experiments" / "runs" / "digits" / "digits" / "best.json").exists()
    assert (tmp_path / "bundle" / "requirements.txt").exists()
