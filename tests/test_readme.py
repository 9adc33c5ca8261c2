"""The README's snippets run as written (shipped weights, offline)."""
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert commands == ["bash launch/install.sh && python -m lrpo_jax.train --config configs/demo.py --workdir runs/demo",
                        'bash launch/install.sh --test && python -m pytest tests -m "not slow" -q']
    ci = (pathlib.Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert commands[1] in ci


@pytest.mark.parametrize("path", ["README.md", "lrpo_jax/bench/PERF_NOTES.md"])
def test_markdown_tables_are_whole(path):
    """A table row after a blank or text line renders as text, not as part of its table; every row has
    its header's number of cells."""
    lines = (pathlib.Path(__file__).resolve().parents[1] / path).read_text().splitlines()
    cells = None
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            cells = None
            continue
        n = len(re.findall(r"(?<!\\)\|", line)) - 1
        if cells is None:
            assert i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]), \
                f"{path}:{i + 1}: a table row with no header above it: {line[:80]}"
            cells = n
        assert n == cells, f"{path}:{i + 1}: {n} cells where the table has {cells}: {line[:80]}"


@pytest.mark.slow
def test_python_snippets_and_one_liners_run():
    snippets = re.findall(r"```python\n(.*?)```", README, re.S)
    one_liners = [shlex.split(line.split("#")[0])[2] for line in README.splitlines() if line.startswith('python -c "')]
    assert snippets and len(one_liners) >= 4
    for code in snippets + one_liners:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (code, proc.stderr[-3000:])
