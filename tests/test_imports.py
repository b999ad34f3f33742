"""The package's imports flow one way: no module imports, directly or through others, a module
that imports it back. Imports inside functions count too (a deferred import is still a
dependency). Importing a submodule always runs its parent package first, so the edge to an
enclosing package is not a dependency of its own."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules(root, package):
    """{dotted name: file} of every module under root/package."""
    modules = {}
    for folder, _, files in os.walk(os.path.join(root, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    return modules


def import_graph(root, package):
    """{module: set of the package's modules it imports}."""
    modules = _modules(root, package)
    graph = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle_through_a_deferred_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg import a\n")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from pkg import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg.sub import b\n")
    graph = import_graph(str(tmp_path), "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_no_import_cycle_in_the_package():
    assert cycles(import_graph(ROOT, "refinedet_tf")) == []


def test_the_exporters_know_an_architecture_only_through_its_interface():
    """export/ takes detections from `architecture_for(config)` (detect, detect_builtin,
    class_scores) and imports none of RefineDet's own modules, so a second architecture
    exports through the same code."""
    internals = {f"refinedet_tf.{name}" for name in ("anchors", "postprocess", "model", "heads", "losses",
                                                      "matching")}
    graph = import_graph(ROOT, "refinedet_tf")
    found = {name: sorted(targets & internals) for name, targets in graph.items()
             if name.startswith("refinedet_tf.export") and targets & internals}
    assert found == {}
