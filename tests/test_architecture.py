"""The floors of src/nola, checked statically (every `import` of every module, parsed, none run).

Rules (README "Architecture"): the library never imports a command (a shell) and a shell imports no
other shell; no two packages import each other, directly or round a loop; `training/` never imports
the pipeline layer; `model/` never imports `adapters/`; `metrics/` imports neither `model/` nor
`adapters/`. Below the shells no function takes a Hydra DictConfig (`nola.config` is where one becomes
typed), no module reads adapter state planted on a model, and one function renames files.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "nola"
# The commands: each one composes its configuration, types it once and calls one library function.
SHELLS = {
    "nola.train", "nola.run", "nola.score", "nola.params", "nola.mini_mixed", "nola.decode.__main__",
    "nola.serve.__main__", "nola.tables.__main__", "nola.bench.__main__", "nola.mini.__main__",
}
PIPELINE = "nola.pipeline"
BOUNDARY = "nola.config"  # the one module where a DictConfig becomes typed


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every nola module `path` imports (at module level or inside a function)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "nola"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "nola":
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names
                          if (PACKAGE / Path(*target.split(".")[1:], alias.name)).with_suffix(".py").is_file()}
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def floor(module: str) -> str:
    """The node a module belongs to in the package graph: its subpackage, or itself at the top."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return ".".join(parts[:2])
    return module


def test_the_scan_sees_the_imports_it_checks():
    """Guards the scanner itself: known edges are found (a scanner that finds nothing passes every rule)."""
    assert "nola.pipeline" in GRAPH["nola.run"]
    assert "nola.training.job" in GRAPH["nola.pipeline"]
    assert "nola.errors" in GRAPH["nola.model.gpt2"]
    assert set(SHELLS) <= set(MODULES)


def test_the_library_imports_no_shell_and_a_shell_no_other_shell():
    offenders = [(module, target) for module, targets in GRAPH.items() for target in targets
                 if target in SHELLS and target != module]
    assert offenders == []


def test_no_package_cycle():
    edges = defaultdict(set)
    for module, targets in GRAPH.items():
        if module in SHELLS:
            continue  # nothing imports a shell, so a shell closes no loop
        for target in targets:
            if floor(target) != floor(module):
                edges[floor(module)].add(floor(target))
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("below, forbidden", [
    ("nola.training", (PIPELINE,)),
    ("nola.model", ("nola.adapters",)),
    ("nola.metrics", ("nola.model", "nola.adapters")),
])
def test_floors_do_not_call_up(below, forbidden):
    offenders = [(module, target) for module, targets in GRAPH.items() if floor(module) == below
                 for target in targets if any(target == f or target.startswith(f + ".") for f in forbidden)]
    assert offenders == []


def library_sources():
    return [(name, path.read_text(encoding="utf-8")) for name, path in MODULES.items() if name not in SHELLS]


def test_no_function_below_the_shells_takes_a_dictconfig():
    offenders = []
    for name, source in library_sources():
        if name == BOUNDARY:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                signature = ast.unparse(node.args) + " " + (ast.unparse(node.returns) if node.returns else "")
                if "DictConfig" in signature:
                    offenders.append(f"{name}.{node.name}")
    assert offenders == []


def test_no_adapter_state_is_read_off_or_planted_on_a_model_by_name():
    pattern = re.compile(r"getattr\(\s*model\s*,\s*[\"']adapter_|setattr\(\s*model\s*,\s*[\"']adapter_")
    assert [name for name, source in library_sources() if pattern.search(source)] == []


def test_one_place_renames_files():
    sites = [(name, number) for name, path in MODULES.items()
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\bos\.replace\(|\bos\.rename\(|\.rename\(|\.replace\((?:dest|target|final)", line)]
    assert [name for name, _ in sites] == ["nola.fileio"]


def test_one_routine_swaps_modules():
    """Module surgery (a layer replaced by an adapted or routed wrapper) is written once."""
    sites = [name for name, source in library_sources() if re.search(r"\bsetattr\((?!self\b)", source)]
    assert sites == ["nola.adapters.targets"]
