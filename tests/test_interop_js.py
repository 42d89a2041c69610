"""p2pnet's DHT against a js-libp2p kad-dht node: scripts/interop/run_js_interop.py as a test.

Besides every kad-dht RPC both ways, the script sends 8 MiB and change each way over
/p2pnet-interop/bulk/1.0.0; the test checks that both arrive intact (count and sha256).
It also runs the DHT-server checks of ``p2pnet conformance`` against the js node.

It needs Node.js >= 20, npm, and the pinned packages in scripts/interop/node_modules.
The test never downloads them unless P2PNET_INTEROP=1 is set (then it runs `npm ci`,
~6-10 s); otherwise it is skipped when they are missing. The run itself takes ~20 s.
Checks that fail because of a known p2pnet bug (KNOWN_P2PNET_BUGS in the script) make the
test xfail, naming the bug; any other failure fails it. See docs/interop.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INTEROP = REPO / "scripts" / "interop"
SCRIPT = INTEROP / "run_js_interop.py"

pytestmark = pytest.mark.slow


def _require_js_side() -> None:
    """Skip unless node, npm and the pinned packages are there (installing them only when
    P2PNET_INTEROP=1)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("js interop: `node` and `npm` are not installed (Node.js >= 20 is needed)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    major = version.stdout.strip().lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < 20:
        pytest.skip(
            f"js interop: Node.js {version.stdout.strip()} is too old; js-libp2p needs >= 20"
        )
    if (INTEROP / "node_modules" / "libp2p").is_dir():
        return
    if os.environ.get("P2PNET_INTEROP") != "1":
        pytest.skip(
            "js interop: scripts/interop/node_modules is missing; run `npm ci` in "
            "scripts/interop (or set P2PNET_INTEROP=1 to let this test run it)"
        )
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=INTEROP,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("js interop: `npm ci` in scripts/interop took over 600 s")
    if result.returncode != 0:
        pytest.skip(
            f"js interop: `npm ci` in scripts/interop failed ({result.returncode}): "
            f"{result.stderr.strip()[-500:]}"
        )


def test_p2pnet_dht_interoperates_with_js_libp2p_kad_dht(tmp_path: Path) -> None:
    _require_js_side()
    report = tmp_path / "interop.json"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--json",
            str(report),
            "--js-log",
            str(tmp_path / "js.log"),
        ],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
        cwd=REPO,
    )
    output = f"{result.stdout}\n{result.stderr}"
    if result.returncode == 2:
        pytest.skip(f"js interop could not run: {result.stderr.strip()}")
    assert report.exists(), (
        f"the interop script wrote no report (exit {result.returncode}):\n{output}"
    )
    data = json.loads(report.read_text())
    assert data["error"] is None, f"the interop run was aborted: {data['error']}\n{output}"
    assert data["checks"], output
    known = data["known_p2pnet_bugs"]
    failed = [c for c in data["checks"] if c["status"] == "FAIL"]
    unexpected = [c for c in failed if c["key"] not in known]
    assert not unexpected, (
        "interop checks failed:\n"
        + "\n".join(f"  {c['key']}: {c['detail']}" for c in unexpected)
        + f"\n{output}"
    )
    # Bulk data crosses intact both ways (byte count and sha256; speed: bench_bulk.py).
    bulk = {c["key"]: c for c in data["checks"] if c["key"].startswith("bulk.")}
    assert set(bulk) == {"bulk.p2pnet_to_js", "bulk.js_to_p2pnet"}, output
    assert all(c["status"] == "PASS" for c in bulk.values()), (
        "bulk transfer with js-libp2p broke:\n"
        + "\n".join(f"  {k}: {c['detail']}" for k, c in bulk.items())
    )
    # The DHT-server checks of `p2pnet conformance` against J: each passes, or is a js
    # difference the script names (JS_DIFFERENCES).
    conformance = {c["key"]: c for c in data["checks"] if c["key"].startswith("conformance.")}
    assert {"conformance.kad-find-node", "conformance.kad-add-provider-other"} <= set(conformance)
    differs = {k for k, c in conformance.items() if c["status"] != "PASS"}
    assert differs <= {f"conformance.{name}" for name in data["js_differences"]}, (
        "js-libp2p fails conformance checks the script does not name:\n"
        + "\n".join(f"  {k}: {conformance[k]['detail']}" for k in sorted(differs))
    )
    if failed:
        pytest.xfail(
            "known p2pnet bug(s), see docs/interop.md: "
            + "; ".join(f"{c['key']}: {known[c['key']]}" for c in failed)
        )
    assert result.returncode == 0, output
