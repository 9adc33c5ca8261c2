"""The Colab notebooks in colabs/ run headless (nbclient) against a smoke-config run directory.

The 3-step smoke run is conftest's session-wide `smoke_run` (trained once for every test that reads
a workdir); each notebook then runs top to bottom in a fresh ipykernel with $LRPO_WORKDIR pointing at
it and MPLBACKEND=Agg. Any cell that raises fails its test (nbclient's CellExecutionError). The
quickstart notebook re-runs the trainer with the same config on a copy of the run (latest checkpoint
only), so it just resumes at step 3 and does no new steps, and the shared run stays untouched.
"""
import json
import os
import pathlib
import shutil
import time

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
COLABS = REPO / "colabs"
NOTEBOOKS = ("router", "calibration", "rollouts", "quickstart")
CELL_TIMEOUT = 600
SMOKE_ARGS = "steps=3,online=0.5"  # what conftest's smoke_run trains


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A `python3` kernel spec for this interpreter, found first through $JUPYTER_PATH.

    Works in a fresh venv without a user-level `ipykernel install`, and never picks up another
    interpreter's `python3` spec from the user's or the system's Jupyter directories.
    """
    from ipykernel.kernelspec import write_kernel_spec
    root = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(root / "kernels" / "python3")  # argv[0] = sys.executable
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(root), os.environ.get("JUPYTER_PATH")])))
        yield "python3"


@pytest.fixture(scope="module")
def workdir(smoke_run):
    wd = pathlib.Path(smoke_run[0])
    for name in ("router.jsonl", "rollouts.jsonl", "config.json", "tensorboard/metrics.jsonl"):
        assert (wd / name).exists(), name
    return wd


def _run(name: str, kernel: str, workdir: pathlib.Path, **env_vars) -> tuple[nbformat.NotebookNode, str]:
    """Executes colabs/<name>.ipynb in a fresh kernel (cwd colabs/); returns it and its text output."""
    nb = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
    env = {**os.environ, "LRPO_WORKDIR": str(workdir), "MPLBACKEND": "Agg", **env_vars,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    client = NotebookClient(nb, kernel_name=kernel, timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(COLABS)}})
    start = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError (naming the cell) if any cell raises
    print(f"{name}.ipynb ran in {time.perf_counter() - start:.1f}s")
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", (name, cell.source[:200])
            if out.output_type == "stream":
                text.append(out.text)
            elif "data" in out:
                text.append(out.data.get("text/html", "") or out.data.get("text/plain", ""))
    return nb, "".join(text)


def test_notebooks_are_committed_clean_and_parameterised():
    for name in NOTEBOOKS:
        nb = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        first, second = nb.cells[0], nb.cells[1]
        assert first.cell_type == "markdown" and first.source.startswith("# "), name
        assert second.cell_type == "code" and 'os.environ.get("LRPO_WORKDIR"' in second.source, name
        assert any('if "google.colab" in sys.modules:' in c.source for c in nb.cells if c.cell_type == "code"), name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}.ipynb has outputs: clear them"


@pytest.mark.slow
def test_router_notebook(kernel, workdir):
    _, text = _run("router", kernel, workdir)
    assert "3 router records (steps 1..3), 4 languages ['de', 'en', 'fr', 'ja']" in text
    rollouts = [json.loads(x) for x in (workdir / "rollouts.jsonl").read_text().splitlines()]
    assert "routed language | rollouts | share | mean reward" in text
    for lang in {r["routed_language"] for r in rollouts}:  # one arm-count row per routed language
        n = sum(r["routed_language"] == lang for r in rollouts)
        assert f"\n{lang} | {n} | " in text, lang


@pytest.mark.slow
def test_calibration_notebook(kernel, workdir):
    _, text = _run("calibration", kernel, workdir)
    assert "(the table of " in text and "languages: ['de', 'en', 'fr', 'ja']" in text
    assert "16/16 ordered pairs present" in text
    assert "samples (encoder): equivalent" in text
    assert "across-pair spread of cross-language equivalent means: raw" in text
    assert "online_rate = 0.5: pair means after step 3" in text  # the checkpointed online-calibration means


@pytest.mark.slow
def test_rollouts_notebook(kernel, workdir):
    _, text = _run("rollouts", kernel, workdir)
    rollouts = [json.loads(x) for x in (workdir / "rollouts.jsonl").read_text().splitlines()]
    assert f"{len(rollouts)} rollouts over 3 logged steps (1..3)" in text
    assert "8 rollouts match step='latest'" in text
    assert rollouts[-1]["id"] in text and "<th>LID</th>" in text and "<th>advantage</th>" in text


@pytest.mark.slow
def test_quickstart_notebook(kernel, workdir, tmp_path):
    latest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, ignore=lambda d, names: [n for n in names if pathlib.Path(d).name == "checkpoints"
                                                            and n.isdigit() and int(n) != latest])
    _, text = _run("quickstart", kernel, copy, LRPO_CONFIG_ARGS=SMOKE_ARGS)
    assert "resumed from step 3" in text  # the fixture's run: no new steps
    assert "=== LRPO finished at step 3 ===" in text
    assert "3 steps logged (last 3)" in text
    assert f"tensorboard --logdir {copy / 'tensorboard'}" in text
