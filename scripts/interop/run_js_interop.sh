#!/usr/bin/env bash
# Interoperability check of p2pnet's DHT against a js-libp2p kad-dht node (docs/interop.md).
# Installs the pinned npm packages (npm ci) when node_modules is missing or older than
# package-lock.json, then runs run_js_interop.py with the project's virtualenv; arguments
# are passed on (--json FILE, --trace FILE, --js-log FILE, -v).
# Exit status: 0 all passed, 1 a check failed, 2 it could not run here.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "run_js_interop.sh: $tool is not installed (the js side needs Node.js >= 20 and npm)" >&2
        exit 2
    fi
done
if [ ! -f "$here/node_modules/.package-lock.json" ] \
    || [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
    echo "run_js_interop.sh: npm ci in $here" >&2
    (cd "$here" && npm ci --no-audit --no-fund) >&2 || exit 2
fi

python="${PYTHON:-$repo/.venv/bin/python}"
if [ ! -x "$python" ]; then
    echo "run_js_interop.sh: no $python; run 'make test' once (it creates .venv) or set PYTHON" >&2
    exit 2
fi
exec "$python" "$here/run_js_interop.py" "$@"
