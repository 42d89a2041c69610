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

import pytest

import p2pnet
import p2pnet.core

PACKAGE = Path(p2pnet.__file__).parent
# Modules that do I/O, read clocks or run an event loop: none of them belongs in core.
IMPURE = {"libp2p", "onnxruntime", "onnx", "trio", "time", "socket", "os", "datetime", "asyncio"}


def core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(p2pnet.core.__path__, "p2pnet.core."))


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_runtime_loads_none_of_the_model_tools() -> None:
    imports = (
        "import p2pnet.runtime\n"
        "for m in pkgutil.walk_packages(p2pnet.runtime.__path__, 'p2pnet.runtime.'):\n"
        "    importlib.import_module(m.name)"
    )
    assert loaded_after(imports, ("p2pnet.modeltools",)) == []


@pytest.mark.slow
def test_the_model_tools_load_torch_scikit_learn_and_tensorflow_only_when_used() -> None:
    heavy = (
        "torch", "sklearn", "skl2onnx", "joblib", "onnxruntime.quantization",
        "tensorflow", "keras", "tf2onnx",
    )  # fmt: skip
    imports = (
        "import p2pnet.modeltools\n"
        "for m in pkgutil.walk_packages(p2pnet.modeltools.__path__, 'p2pnet.modeltools.'):\n"
        "    importlib.import_module(m.name)"
    )
    assert loaded_after(imports, heavy) == []


# Each package (or top-level module) and the layer it sits in: a module may import from
# its own layer and the layers below it, never from a layer above. Imports under
# ``if TYPE_CHECKING:`` are for annotations only and are not counted.
LAYERS: dict[str, int] = {
    "errors": 0,
    "core": 1,
    "runtime": 2,
    "net": 2,
    "sqlite_file": 2,
    "ledger": 2,
    "accounting": 2,
    "config": 2,
    "status": 2,
    "modeltools": 3,
    "dht": 3,
    "invoke": 3,
    "logs": 3,
    "discovery": 4,
    "pipeline": 5,
    "trust": 5,
    "services": 6,
    "peer": 7,
    "gateway": 8,
    "localswarm": 8,
    "inputs": 8,
    "simulate": 8,
    "conformance": 8,
    "cli": 9,
}


def all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(p2pnet.__path__, "p2pnet."))


def runtime_imports(module: str) -> set[str]:
    """The p2pnet modules ``module`` imports outside ``if TYPE_CHECKING:`` blocks."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(n) for n in ast.walk(node)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {n for n in names if n.startswith("p2pnet.")}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_package_has_a_layer() -> None:
    unplaced = {m.split(".")[1] for m in all_modules() if layer_of(m) is None}
    assert not unplaced, f"add these to LAYERS: {sorted(unplaced)}"


def test_imports_point_downwards_only() -> None:
    upwards = []
    for module in all_modules():
        own = layer_of(module)
        assert own is not None
        for imported in runtime_imports(module):
            target = layer_of(imported)
            if target is not None and target > own:
                upwards.append(f"{module} (layer {own}) imports {imported} (layer {target})")
    assert not upwards, "\n".join(upwards)


def test_every_package_docstring_maps_its_modules() -> None:
    missing = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        folder = init.parent
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        for child in sorted(folder.iterdir()):
            if child.name.startswith("_"):
                continue
            if child.suffix == ".py":
                name = child.name
            elif (child / "__init__.py").exists():
                name = f"{child.name}/"
            else:
                continue
            if name not in doc:
                missing.append(f"{folder.relative_to(PACKAGE.parent)}: {name}")
    assert not missing, "not in the package's docstring map:\n" + "\n".join(missing)
