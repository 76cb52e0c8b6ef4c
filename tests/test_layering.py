"""Data flows one way (graph, kernels → plan → tasks → serve): lower layers never import upper ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sparsejit"
FORBIDDEN = {
    "checkpoints": ("sparsejit.graph", "sparsejit.kernels", "sparsejit.plan", "sparsejit.tasks", "sparsejit.serve"),
    "graph": ("sparsejit.kernels", "sparsejit.plan", "sparsejit.tasks", "sparsejit.serve"),
    "kernels": ("sparsejit.graph", "sparsejit.plan", "sparsejit.tasks", "sparsejit.serve"),
    "plan": ("sparsejit.tasks", "sparsejit.serve"),
    "tasks": ("sparsejit.serve", "sparsejit.batch"),
    "batch": ("sparsejit.serve",),
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_imports(layer: str) -> None:
    offenders = [f"{path.relative_to(PKG)} imports {name}"
                 for path in sorted((PKG / layer).rglob("*.py"))
                 for name in _imports(path) if name.startswith(FORBIDDEN[layer])]
    assert not offenders, offenders


def test_runtime_never_imports_torch_or_transformers() -> None:
    """Only `sparsejit.training` (the optional `[train]` extra) may import torch / transformers."""
    offenders = [f"{path.relative_to(PKG)} imports {name}" for path in sorted(PKG.rglob("*.py"))
                 if "training" not in path.relative_to(PKG).parts
                 for name in _imports(path) if name.split(".")[0] in ("torch", "transformers")]
    assert not offenders, offenders


def _top_level_imports(path: Path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_training_is_imported_only_when_used() -> None:
    """Outside `training/`, modules import `sparsejit.training` inside functions only, and the package's own
    `__init__` and recipe import no torch, so `import sparsejit` and the CLI work without the extra."""
    offenders = [f"{path.relative_to(PKG)} imports {name} at module level" for path in sorted(PKG.rglob("*.py"))
                 if "training" not in path.relative_to(PKG).parts
                 for name in _top_level_imports(path) if name.startswith("sparsejit.training")]
    for light in ("__init__.py", "recipe.py"):
        offenders += [f"training/{light} imports {name}" for name in _top_level_imports(PKG / "training" / light)
                      if name.split(".")[0] in ("torch", "transformers")
                      or name.startswith("sparsejit.training.") and not name.endswith((".recipe",))]
    assert not offenders, offenders


def test_ray_and_dask_stay_optional() -> None:
    """Only `sparsejit.integrations` imports ray / dask, and only inside functions there: the integration
    modules import without the extras, and nothing else ever needs them."""
    offenders = [f"{path.relative_to(PKG)} imports {name}" for path in sorted(PKG.rglob("*.py"))
                 if "integrations" not in path.relative_to(PKG).parts
                 for name in _imports(path) if name.split(".")[0] in ("ray", "dask", "distributed")]
    offenders += [f"{path.relative_to(PKG)} imports {name} at module level"
                  for path in sorted((PKG / "integrations").rglob("*.py"))
                  for name in _top_level_imports(path) if name.split(".")[0] in ("ray", "dask", "distributed")]
    assert not offenders, offenders


def test_graph_passes_do_not_import_each_other() -> None:
    """A pass reads the rewrite infrastructure, op traits and shared patterns, never another pass."""
    from sparsejit.graph.passes import PASSES

    pass_modules = {module.__name__ for module in PASSES}
    offenders = [f"{name} imports {imported}" for name in sorted(pass_modules)
                 for imported in _imports(PKG / "graph" / f"{name.rsplit('.', 1)[1]}.py")
                 if imported in pass_modules or imported == "sparsejit.graph.passes"
                 or imported.startswith("sparsejit.graph.fusion")]
    assert not offenders, offenders
    assert not (PKG / "graph" / "fusion.py").exists()


def test_server_uses_only_the_pipelines_public_contract() -> None:
    """The server runs pipelines through `parse` / `run_items` / `format` (what `__call__` runs), never a
    private hook of `tasks/`, so no task can behave differently when served."""
    private = {node.name for path in (PKG / "tasks").rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.FunctionDef) and node.name.startswith("_") and not node.name.startswith("__")}
    private |= {"_params"}
    offenders = [f"{path.relative_to(PKG)} uses .{node.attr}" for path in sorted((PKG / "serve").rglob("*.py"))
                 for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Attribute) and node.attr in private]
    assert not offenders, offenders
