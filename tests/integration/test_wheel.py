"""The built wheel, installed as production installs it, serves a request on the dev stack.

``make`` installs npcflow editable, which hides every file the wheel leaves out (pricing.yaml did
go missing once). Here the wheel is built from a copy of the source tree, installed with its
dependencies (not editable, no system site-packages, pip's cache reused) into a fresh venv, and a
router and a Silver worker run from that venv until ``npcflow send`` from the same venv prints a
reply. Nothing of the checkout is on their path: they run outside it, with no PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.endpoints import StackEndpoints
from devstack.supervise import ManagedProcess, stop_processes

ROOT = Path(__file__).resolve().parents[2]
#: What a wheel is not built from: VCS data, venvs, caches, earlier builds, the dev stack's state.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", ".npcflow", "__pycache__", ".*cache", ".hypothesis"
)


def _run(argv: list[str | Path], cwd: Path, timeout: float = 900) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _clean_env() -> dict[str, str]:
    """This process's environment without npcflow's settings and without a path into the checkout."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if not k.startswith("NPCFLOW_") and k not in drop}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel built from this tree and the wheel's dependencies."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", source], work)
    (wheel,) = (work / "dist").glob("npcflow-*.whl")
    target = work / "venv"
    _run([sys.executable, "-m", "venv", target], work)
    _run([target / "bin" / "python", "-m", "pip", "install", "-q", wheel], work)
    return target


def test_the_wheel_is_what_the_venv_imports_with_its_data_files(venv: Path, tmp_path: Path) -> None:
    probe = (
        "import pipeline, workers.sinks.base as b; from importlib import resources as r; "
        "print(pipeline.__file__); "
        "[r.files(p).joinpath(f).read_text() for p, f in ("
        "('pipeline.intents', 'default_intents.yaml'), ('topics', 'policy.yaml'), "
        "('pipeline.observability', 'pricing.yaml'))]; "
        "print(sorted(x.name for x in b.shipped('sql').glob('*.sql')))"
    )
    out = _run([venv / "bin" / "python", "-c", probe], tmp_path).splitlines()
    assert out[0].startswith(str(venv)), out
    assert out[1] != "[]", "the SQL migrations are not installed"
    version = _run([venv / "bin" / "npcflow", "--version"], tmp_path)
    assert version.startswith("npcflow ")


@pytest.fixture
def pipeline_from_wheel(
    venv: Path, stack: StackEndpoints, prefix: str, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """A router and a scripted Silver worker from the venv; yields their environment once both serve."""
    env = _clean_env() | stack.as_env() | {"NPCFLOW_TOPIC_PREFIX": prefix}
    npcflow = str(venv / "bin" / "npcflow")
    commands = {
        "router": [npcflow, "run", "router"],
        "worker-silver": [npcflow, "run", "worker", "--tier", "silver", "--engine", "scripted"],
    }
    procs: list[tuple[ManagedProcess, Path]] = []
    for name, argv in commands.items():
        ready = tmp_path / f"{name}.ready"
        proc = ManagedProcess(
            name=name,
            argv=argv,
            log_path=tmp_path / f"{name}.log",
            cwd=tmp_path,
            env=env | {"NPCFLOW_READY_FILE": str(ready)},
        )
        proc.start(die_with_parent=True)
        procs.append((proc, ready))
    try:
        deadline = time.monotonic() + 90
        for proc, ready in procs:
            while not ready.exists():
                problem = proc.exit_problem()
                assert not problem, f"{proc.name} {problem}: {proc.log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, (
                    f"{proc.name} not serving: {proc.log_path.read_text()[-3000:]}"
                )
                time.sleep(0.1)
        yield env
    finally:
        stop_processes([p for p, _ in procs])


def test_a_router_and_a_worker_from_the_wheel_answer_npcflow_send(
    venv: Path, pipeline_from_wheel: dict[str, str], tmp_path: Path
) -> None:
    argv = [
        venv / "bin" / "npcflow",
        "send",
        "Where is the smith?",
        "--npc",
        "npc-wheel",
        "--sla",
        "interactive",
    ]
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=tmp_path,
        env=pipeline_from_wheel,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[npc-wheel] scripted reply" in done.stdout, done.stdout
