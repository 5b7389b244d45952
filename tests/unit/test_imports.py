"""The package's import graph, read from the source (nothing is imported): no cycles.

Two graphs: the imports a module runs when it is loaded (module level), which must have no cycle; and every import,
the ones inside functions too, which must have none but ``LAZY_CYCLES``. The data code's cycle (``prepare`` <->
``input_pipeline.prepared``, before ``alexnet_jax.data``) was one of them.
"""

import ast
import os

import alexnet_jax

PACKAGE = os.path.dirname(alexnet_jax.__file__)
# Left as they are, through imports inside functions only: evaluate -> weights (``imported_without_data``) ->
# inference (a run's Predictor) -> evaluate.
LAZY_CYCLES = [["alexnet_jax.evaluate", "alexnet_jax.inference", "alexnet_jax.weights"]]


def modules() -> dict[str, str]:
  """{dotted module name: path} of every module of alexnet_jax (a package under its own name)."""
  out = {}
  root = os.path.dirname(PACKAGE)
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        name = os.path.relpath(os.path.join(folder, f), root)[: -len(".py")].replace(os.sep, ".")
        out[name.removesuffix(".__init__")] = os.path.join(folder, f)
  return out


def _imports(node: ast.AST, known: set[str]) -> set[str]:
  """The alexnet_jax modules that one import statement loads (``from pkg import mod`` loads ``pkg.mod``)."""
  if isinstance(node, ast.Import):
    return {a.name for a in node.names if a.name in known}
  if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
    found = {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    if node.module in known and len(found) < len(node.names):
      found.add(node.module)
    return found
  return set()


def graph(module_level_only: bool) -> dict[str, set[str]]:
  mods = modules()
  known = set(mods)
  out = {}
  for name, path in mods.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    nodes = tree.body if module_level_only else ast.walk(tree)
    out[name] = set().union(*(_imports(n, known) for n in nodes)) - {name}
  return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of ``g`` with more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(g[v]):
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

  for v in sorted(g):
    if v not in index:
      visit(v)
  return found


def test_the_graph_is_read():
  g = graph(module_level_only=False)
  assert "alexnet_jax.data.format" in g["alexnet_jax.data.prepare"]
  assert "alexnet_jax.data.prepare" in g["alexnet_jax.prepare"]


def test_no_module_level_import_cycle():
  assert cycles(graph(module_level_only=True)) == []


def test_no_import_cycle_but_the_known_lazy_ones():
  assert [c for c in cycles(graph(module_level_only=False)) if c not in LAZY_CYCLES] == []


def test_the_cycle_finder_finds_one():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
