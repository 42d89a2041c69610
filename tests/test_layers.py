"""The layers hold: the pure core loads no networking, runtime or clock module, whoever
imports it, and imports reach only the layers below; the runtime loads none of the
offline model tools, and those load their heavy libraries only when used."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import p2pnet
import p2pnet.core

PACKAGE = Path(p2pnet.__file__).parent
# Modules that do I/O, read clocks or run an event loop: none of them belongs in core.
IMPURE = {"libp2p", "onnxruntime", "onnx", "trio", "time", "socket", "os", "datetime", "asyncio"}


def core_modules() -> list[str]:
    return sorted(
        m.name for m in pkgutil.walk_packages(p2pnet.core.__path__, "p2pnet.core.")
    )


def direct_imports(module: str) -> set[str]:
    """Top-level names of the packages ``module``'s source imports."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add((node.module or "").split(".")[0])
    return names


def test_every_core_module_imports_nothing_impure() -> None:
    modules = core_modules()
    assert "p2pnet.core.records" in modules and "p2pnet.core.kad.lookup" in modules
    for module in modules:
        assert not direct_imports(module) & IMPURE, module


def test_importing_all_of_core_loads_no_networking_runtime_or_trio() -> None:
    # A fresh interpreter: this one has loaded everything already.
    code = (
        "import importlib, json, sys\n"
        f"for m in {core_modules()!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in ('libp2p', 'onnxruntime', 'onnx', 'trio')"
        " if m in sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(loaded) == []


def loaded_after(imports: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with one of ``prefixes`` that a fresh interpreter has loaded
    after running ``imports``."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"{imports}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    result: list[str] = json.loads(out)
    return result


def test_the_runtime_loads_none_of_the_model_tools() -> None:
    imports = (
        "import p2pnet.runtime\n"
        "for m in pkgutil.walk_packages(p2pnet.runtime.__path__, 'p2pnet.runtime.'):\n"
        "    importlib.import_module(m.name)"
    )
    assert loaded_after(imports, ("p2pnet.modeltools",)) == []


def test_the_model_tools_load_torch_and_scikit_learn_only_when_used() -> None:
    heavy = ("torch", "sklearn", "skl2onnx", "joblib", "onnxruntime.quantization")
    imports = (
        "import p2pnet.modeltools\n"
        "for m in pkgutil.walk_packages(p2pnet.modeltools.__path__, 'p2pnet.modeltools.'):\n"
        "    importlib.import_module(m.name)"
    )
    assert loaded_after(imports, heavy) == []
