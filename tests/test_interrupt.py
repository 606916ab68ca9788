"""A real process interrupted during the search (SIGTERM, or Ctrl-C's SIGINT) leaves a whole, resumable state and
no stray files."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    from tests.lightning_helpers import tiny_data, tiny_module, trainer
    from lightning_legr import LeGRCallback

    root = sys.argv[1]
    callback = LeGRCallback(flops=[0.5], dirpath=root + "/legr", generations=30, population=4, sample_size=2,
                            finetune_epochs=0, latency=False)
    trainer(root, [callback]).fit(tiny_module(), datamodule=tiny_data())
    print("DONE", callback.transform.info["generation"])
    """
)


def start(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_search_then_resume(tmp_path, signum):
    state = tmp_path / "legr" / "search_state.json"
    process = start(tmp_path)
    deadline = time.time() + 120
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert state.exists(), process.communicate()[0].decode()[-2000:]
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode != 0, output[-2000:]
    assert "DONE" not in output

    generation = json.loads(state.read_text())["evolution"]["generation"]  # whole, valid JSON
    assert 1 <= generation < 30
    assert not list(tmp_path.rglob(".tmp-*"))
    assert not (tmp_path / "legr" / "transform.json").exists()

    process = start(tmp_path)  # the same command again
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0, output[-3000:]
    assert "DONE" in output
    assert json.loads(state.read_text())["evolution"]["generation"] == 30
    assert (tmp_path / "legr" / "results.json").exists()
