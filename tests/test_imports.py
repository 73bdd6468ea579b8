"""The package's import graph has no cycles; no dnd_jax module imports another inside a function.

A cycle between modules is what pushes imports into functions (`import` on first call, to dodge
the half-initialised module), and such lazy imports hide the layering: a module that looks low in
the graph calls up into the trainer. The graph is read from the source (every `import` and `from`
statement, at the top, under `if TYPE_CHECKING:` and inside functions), so a cycle fails here
even where Python would tolerate it at run time. A function-level import of a dnd_jax module is
allowed only where `LAZY` states a reason other than a cycle.
"""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "dnd_jax"

# (importing module, imported module): why the import waits for the call. Only reasons of weight
# (a heavy or optional dependency kept off a path that does not need it) belong here, never a
# cycle.
LAZY = {
    ("dnd_jax.bench.torch_rows", "dnd_jax.torch_reference"):
        "torch, a test and benchmark extra, for the PyTorch rows alone",
    ("dnd_jax.torch_reference", "dnd_jax.torch_bridge"):
        "the PyTorch reference imports no JAX code at its top: it is what that code is checked "
        "against",
    ("dnd_jax.torch_reference", "dnd_jax.methods"):
        "the PyTorch reference imports no JAX code at its top: it is what that code is checked "
        "against",
    ("dnd_jax.workdir", "dnd_jax.runtime"):
        "scripts/gpu/record_run.py reads run folders after every GPU run without importing jax",
    ("dnd_jax.reproduce.run", "dnd_jax.checkpoints"):
        "orbax stays out of scripts/reproduce.py until a run or a teacher's weights need it",
    ("dnd_jax.reproduce.run", "dnd_jax.train"):
        "orbax stays out of scripts/reproduce.py until a run or a teacher's weights need it",
    ("dnd_jax.reproduce.run", "dnd_jax.teacher"):
        "orbax stays out of scripts/reproduce.py until a run or a teacher's weights need it",
}


def _modules() -> dict[str, str]:
  """Module name -> file, for every .py file of the package."""
  found = {}
  root = os.path.join(REPO, PACKAGE)
  for folder, _, files in os.walk(root):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      found[".".join(parts)] = path
  return found


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict) -> list[str]:
  """The package modules an import statement loads (a `from a import b` of a submodule b: a.b)."""
  if isinstance(node, ast.Import):
    names = [alias.name for alias in node.names]
  else:
    base = node.module or ""
    if node.level:
      parent = module.split(".")
      parent = parent[:len(parent) - node.level + (1 if is_package else 0)]
      base = ".".join(parent + ([base] if base else []))
    names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
             for alias in node.names]
  hits = []
  for name in names:
    while name and name not in modules:  # `import a.b.c` of a function or class: its module
      name = name.rpartition(".")[0]
    if name.startswith(PACKAGE + ".") or name == PACKAGE:
      hits.append(name)
  return hits


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
  """(module -> the package modules it imports, [(module, imported, line) of imports inside a
  function]). Importing a.b.c also runs a.b's and a's __init__, so those are edges too."""
  modules = _modules()
  graph: dict[str, set[str]] = {m: set() for m in modules}
  lazy = []
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    functions = [n for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    inside = {id(n) for fn in functions for n in ast.walk(fn) if n is not fn}
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      for target in _targets(node, module, is_package, modules):
        chain = target.split(".")
        for i in range(len(chain), 1, -1):  # the module and the packages above it
          parent = ".".join(chain[:i])
          if parent != module and not module.startswith(parent + "."):
            graph[module].add(parent)
        if id(node) in inside and target != module and (module, target, node.lineno) not in lazy:
          lazy.append((module, target, node.lineno))
  return graph, lazy


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The graph's strongly connected components of more than one module (Tarjan), sorted."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(found)


def test_the_package_has_no_import_cycles():
  graph, _ = import_graph()
  assert cycles(graph) == []


def test_no_dnd_jax_module_is_imported_inside_a_function_without_a_stated_reason():
  _, lazy = import_graph()
  unexplained = [f"{m} line {line} imports {t}" for m, t, line in lazy if (m, t) not in LAZY]
  assert unexplained == []


def test_every_stated_lazy_import_still_exists():
  _, lazy = import_graph()
  assert set(LAZY) <= {(m, t) for m, t, _ in lazy}


if __name__ == "__main__":
  graph, lazy = import_graph()
  for component in cycles(graph):
    print("cycle:", " <-> ".join(component))
  for module, target, line in lazy:
    reason = LAZY.get((module, target), "NO REASON")
    print(f"lazy: {module}:{line} -> {target} ({reason})")
