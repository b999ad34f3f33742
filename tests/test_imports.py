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


# Modules that know RefineDet itself: its network, anchors, targets, losses and decoding. The
# shared machinery (training, evaluation, export, checkpoints) reaches them only through the
# detector interface, `refinedet_tf.architectures`, where each architecture plugs in.
REFINEDET_SPECIFIC = ("refinedet_tf.anchors", "refinedet_tf.backbones", "refinedet_tf.heads", "refinedet_tf.losses",
                      "refinedet_tf.matching", "refinedet_tf.model", "refinedet_tf.postprocess",
                      "refinedet_tf.data.anchor_fit", "refinedet_tf.data.inspect")
# Faster R-CNN's own modules: all of its subpackage but its config (presets.py finds its presets).
FASTER_RCNN_SPECIFIC = tuple(f"refinedet_tf.faster_rcnn.{name}" for name in (
    "anchor_targets", "anchors", "head", "losses", "model", "ohem", "proposals", "roi_pooling", "roi_targets", "rpn",
    "sampling"))
SHARED_MACHINERY = ("refinedet_tf.training", "refinedet_tf.evaluation", "refinedet_tf.export",
                    "refinedet_tf.checkpoints")
INTERFACE = "refinedet_tf.architectures"


def _within(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def reachable_without(graph, start, barrier):
    """Modules `start` imports directly or through others, never passing through `barrier`."""
    seen, todo = set(), [start]
    while todo:
        for other in graph[todo.pop()]:
            if other not in seen and not _within(other, (barrier,)):
                seen.add(other)
                todo.append(other)
    return seen


def test_shared_machinery_reaches_each_architecture_only_through_the_interface():
    graph = import_graph(ROOT, "refinedet_tf")
    specific = REFINEDET_SPECIFIC + FASTER_RCNN_SPECIFIC
    leaks = {name: sorted(m for m in reachable_without(graph, name, INTERFACE) if _within(m, specific))
             for name in graph if _within(name, SHARED_MACHINERY)}
    assert {name: found for name, found in leaks.items() if found} == {}
    # The interface is what does import them (so the lists above name real modules).
    assert {m for m in graph["refinedet_tf.architectures.refinedet"] if _within(m, REFINEDET_SPECIFIC)} >= {
        "refinedet_tf.model", "refinedet_tf.losses", "refinedet_tf.postprocess", "refinedet_tf.anchors"}
    assert {m for m in graph["refinedet_tf.architectures.faster_rcnn"] if _within(m, FASTER_RCNN_SPECIFIC)} >= {
        "refinedet_tf.faster_rcnn.model", "refinedet_tf.faster_rcnn.losses", "refinedet_tf.faster_rcnn.ohem",
        "refinedet_tf.faster_rcnn.anchor_targets", "refinedet_tf.faster_rcnn.roi_targets"}
    assert all(name in graph for name in FASTER_RCNN_SPECIFIC)
