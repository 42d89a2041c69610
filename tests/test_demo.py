"""scripts/demo.py (what `make demo` runs): five peers, the pipeline on three messages,
a generated reply streamed, forwarded once, a crash with failover, clean shutdown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_stops_cleanly(
    cs_models: dict[str, Path], dialogue_models: dict[str, Path]
) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--models",
         str(cs_models["emotion"].parent), "--reply-model", str(dialogue_models["cs-reply-llm"])],
        capture_output=True, text=True, timeout=240,
        # No PATH: the demo starts its peers with its own interpreter. Their status
        # files go to this run's configuration directory (tests/conftest.py).
        env={"COLUMNS": "200", "PATH": "", "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]},
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert out.count("orchestrated,") == 3
    assert "forwarded," in out
    assert "article refund-request" in out  # the broken-order message finds the refund article
    # A generated reply streamed: how many tokens, from which reply provider, why it ended.
    assert re.search(r"\d+ tokens from peer [45], first after \d+ ms .* ended by (eos|length)", out)
    # The reply peer is killed; the step fails over to the other reply provider.
    assert re.search(r"peer [45] \((unreachable|connection_lost)\)", out), out
    assert "peers stopped with SIGINT (exit codes [0, 0, 0, 0])" in out
