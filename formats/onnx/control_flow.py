"""ONNX control flow as real exporters write it: ``If``, ``Loop`` and ``Scan`` nodes, whose graph attributes
(subgraphs) hold their own initializers and Constant nodes.  Used by :mod:`weightport.formats.onnx.reader`.

* **An If whose condition is a constant** (an initializer, a Constant node, or a comparison of constants the
  reader's constant folding computed) is inlined: the taken branch's nodes
  and initializers join the main graph (names that clash with the main graph's are renamed inside the
  branch) and Identity nodes carry its outputs to the If's outputs.  The other branch never runs: its
  constants are accounted for as ``folded`` into that decision, by name, in ``explain``.  A branch that
  itself holds subgraphs is not inlined.
* **Any other control-flow node** stays an ``onnx_op`` layer the canonical torch module cannot run
  (``validate`` says which layer), and every constant inside its subgraphs, at any depth, is kept as
  stored (a ``constant`` layer, the named buffer ``<name>.value``) with a warning naming them; ``--strict``
  refuses the file instead.  Nothing inside a subgraph is ever dropped without a line saying so.
"""

from __future__ import annotations

from typing import Any

from weightport.formats.onnx import graph as exported

MAX_INLINED = 64  # If nodes inlined in one file (each inlining may expose another constant condition)


def graph_attributes(onnx: Any, node: Any) -> list[tuple[str, Any]]:
    """The subgraphs of ``node`` (If's ``then_branch``/``else_branch``, Loop's and Scan's ``body``)."""
    found = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            found.append((attribute.name, attribute.g))
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            found.extend((f"{attribute.name}{k}", g) for k, g in enumerate(attribute.graphs))
    return found


def subgraph_constants(onnx: Any, node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every initializer and Constant-node value inside ``node``'s subgraphs, at any depth, as
    (``<node>/<attribute>/<name>``, TensorProto)."""
    label = prefix + (node.name or (node.output[0] if node.output else node.op_type))
    found = []
    for attribute, graph in graph_attributes(onnx, node):
        where = f"{label}/{attribute}/"
        found.extend((where + tensor.name, tensor) for tensor in graph.initializer)
        for inner in graph.node:
            if inner.op_type == "Constant":
                found.extend((where + inner.output[0], a.t) for a in inner.attribute
                             if a.name == "value" and a.type == onnx.AttributeProto.TENSOR)
            found.extend(subgraph_constants(onnx, inner, where))
    return found


def condition(reader: Any, node: Any) -> bool | None:
    """The If's condition when it is a constant the reader knows (None otherwise)."""
    if node.op_type != "If" or not node.input or not reader.is_weight(node.input[0]):
        return None
    value = reader.array(reader.tensors[reader.resolve(node.input[0])]).reshape(-1)
    return bool(value[0]) if value.size == 1 else None


def inline_constant_ifs(reader: Any) -> bool:
    """Inline the first If of the reader's graph whose condition is a constant (see the module docstring).
    The untaken branch's constants go to ``reader.untaken`` (name -> where).  True when the graph changed:
    the reader then indexes it again and calls this again (an inlined branch may hold the next one)."""
    onnx = reader.onnx
    graph = reader.proto.graph
    for position, node in enumerate(graph.node):
        taken = condition(reader, node)
        if taken is None:
            continue
        branches = dict(graph_attributes(onnx, node))
        branch = branches.get("then_branch" if taken else "else_branch")
        if branch is None or any(graph_attributes(onnx, inner) for inner in branch.node) \
                or len(branch.output) != len(node.output):
            continue
        label = node.name or node.output[0]
        other = "else_branch" if taken else "then_branch"
        skipped = type(node)()
        skipped.CopyFrom(node)
        del skipped.attribute[:]
        skipped.attribute.extend(a for a in node.attribute if a.name == other)
        for name, _ in subgraph_constants(onnx, skipped):
            reader.untaken[name] = f"untaken {other} of If node {label!r} (its condition is the constant {taken})"
        source, _ = exported.origin(reader, node.input[0])
        if source in reader.source_constants:
            reader.untaken[source] = f"the condition of If node {label!r}, inlined"
        nodes = renamed_branch(onnx, graph, branch, node, f"{label}/{'then_branch' if taken else 'else_branch'}/")
        del graph.node[position]
        for offset, inner in enumerate(nodes):
            graph.node.insert(position + offset, inner)
        return True
    return False


def renamed_branch(onnx: Any, graph: Any, branch: Any, node: Any, where: str) -> list[Any]:
    """The branch's nodes for the main graph: its initializers moved in, its constants (initializers, Constant
    nodes) named ``<If>/<branch>/<name>`` as :func:`subgraph_constants` names them, every other name it
    defines that the main graph already uses renamed (``<name>__<If>``), and an Identity per output onto the
    If's output."""
    used = {t.name for t in graph.initializer} | {i.name for i in graph.input} | \
        {name for n in graph.node for name in list(n.input) + list(n.output)}
    constants = [t.name for t in branch.initializer] + [n.output[0] for n in branch.node if n.op_type == "Constant"]
    defined = [name for n in branch.node for name in n.output if name and name not in constants]
    suffix = "__" + "".join(c if c.isalnum() else "_" for c in (node.name or node.output[0]))
    rename = {name: name + suffix for name in defined if name in used}
    rename.update({name: where + name for name in constants})
    for tensor in branch.initializer:
        moved = type(tensor)()
        moved.CopyFrom(tensor)
        moved.name = rename.get(tensor.name, tensor.name)
        graph.initializer.append(moved)
    nodes = []
    for inner in branch.node:
        copy = type(inner)()
        copy.CopyFrom(inner)
        copy.input[:] = [rename.get(name, name) for name in inner.input]
        copy.output[:] = [rename.get(name, name) for name in inner.output]
        nodes.append(copy)
    for result, output in zip(branch.output, node.output):
        nodes.append(onnx.helper.make_node("Identity", [rename.get(result.name, result.name)], [output],
                                           name=f"{node.name or node.output[0]}/{result.name}"))
    return nodes
