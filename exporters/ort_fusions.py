"""Graph rewrites that fit muxdeploy's exported graphs to onnxruntime's fused kernels (the ORT-only artifact).

onnxruntime's transformer optimizer recognises BERT's subgraphs; three shapes of ours need a nudge:

- `move_attention_scale`: the portable graph scales Q before the first attention MatMul (TensorRT's MHA fusion
  wants it there); onnxruntime's fuser matches softmax(Div(MatMul(q, k), sqrt(d))). Moving a scalar scale from
  Q to after the MatMul is exact algebra (and bit-exact when the scale is a power of two).
- `fuse_embed_layer_norm`: Gather(word, ids) + Gather(position, pos) -> LayerNormalization, one per mux slot
  (see `muxdeploy.models.export_form`), becomes com.microsoft EmbedLayerNormalization: one kernel that
  gathers, adds and normalises, instead of four passes over [B, T, D].
- `sum_slot_outputs`: the chain Add(Add(slot0, slot1), slot2) ... over the slots becomes one Sum, which reads
  every slot once instead of reading and writing a running total N - 1 times.
- `fuse_broadcast_skip_layer_norm`: the second embedding pass, LayerNorm(mixture + constant position rows),
  becomes SkipLayerNormalization, which runs in FP16 (the FP16 converter keeps a plain LayerNorm in FP32,
  between Casts: at N=1 that costs ~1.5 ms of an 80 ms step on an H100).
- `transpose_matmul_weights` (an option): constant-weight MatMuls as FusedMatMul with transB, PyTorch's layout.

Each returns how many places it rewrote; all work on an `onnx.ModelProto` in place.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

ORT_DOMAIN = "com.microsoft"


# op -> how many leading inputs must be constant to fold it
_FOLDABLE = {"Slice": 3, "Add": 2, "Sub": 2, "Mul": 2, "Unsqueeze": 2, "Reshape": 2, "Cast": 1}


def _fold(node: Any, args: list[np.ndarray | None]) -> np.ndarray:
    """numpy evaluation of one foldable node (see _FOLDABLE) on constant inputs."""
    from onnx import helper

    op = node.op_type
    if op in ("Add", "Sub", "Mul"):
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](args[0], args[1])
    if op == "Unsqueeze":
        return np.expand_dims(args[0], tuple(int(a) for a in args[1]))
    if op == "Reshape":
        return args[0].reshape(tuple(int(d) for d in args[1]))
    if op == "Cast":
        to = next(a.i for a in node.attribute if a.name == "to")
        return args[0].astype(helper.tensor_dtype_to_np_dtype(to))
    data, starts, ends = args[0], args[1], args[2]
    axes = args[3] if len(args) > 3 and args[3] is not None else np.arange(len(starts))
    steps = args[4] if len(args) > 4 and args[4] is not None else np.ones(len(starts), dtype=np.int64)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


class _Graph:
    """Producer/consumer maps of a graph, rebuilt after each rewrite."""

    def __init__(self, model: Any) -> None:
        if not any(op.domain == ORT_DOMAIN for op in model.opset_import):  # the contrib ops we may add
            from onnx import helper

            model.opset_import.append(helper.make_opsetid(ORT_DOMAIN, 1))
        self.graph = model.graph
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                self.consumers[name].append(node)

    def only_consumer(self, name: str) -> Any | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    def constant(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The value of `name` when it is an initializer, a Constant, or Slice/Add/Sub/Mul/Unsqueeze/Reshape/Cast
        of constants (the exporter leaves such small subgraphs unfolded next to large tables), else None."""
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is None or depth > 8:
            return None
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return None if value is None else numpy_helper.to_array(value)
        args = [self.constant(i, depth + 1) if i else None for i in node.input]
        if node.op_type not in _FOLDABLE or any(a is None for a in args[: _FOLDABLE[node.op_type]]):
            return None
        return _fold(node, args)

    def scalar(self, name: str) -> float | None:
        from onnx import numpy_helper

        init = self.initializers.get(name)
        if init is None:
            return None
        value = numpy_helper.to_array(init)
        return float(value.reshape(-1)[0]) if value.size == 1 else None

    def replace(self, old: list[Any], new: list[Any]) -> None:
        """Put `new` where the last of `old` was, then drop `old`: every input of `new` is an input of some node of
        `old`, produced before it, so the graph stays topologically sorted."""
        nodes = list(self.graph.node)
        at = max(nodes.index(n) for n in old) + 1 - len(old)
        for node in old:
            self.graph.node.remove(node)
        for offset, node in enumerate(new):
            self.graph.node.insert(at + offset, node)


def _until_done(model: Any, rewrite_one: Callable[[_Graph], bool]) -> int:
    """Apply `rewrite_one` (one rewrite on fresh producer/consumer maps; False when it finds none) until done;
    returns how many rewrites it made."""
    count = 0
    while rewrite_one(_Graph(model)):
        count += 1
    return count


def _normalized_sums(g: _Graph) -> Iterator[tuple[Any, Any]]:
    """(LayerNormalization, Add) pairs where the LayerNorm normalises an Add that feeds nothing else."""
    for norm in g.graph.node:
        if norm.op_type != "LayerNormalization" or len(norm.input) < 3:
            continue
        add = g.producer.get(norm.input[0])
        if add is not None and add.op_type == "Add" and g.only_consumer(add.output[0]) is norm:
            yield norm, add


def _epsilon(norm: Any) -> float:
    return next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)


def move_attention_scale(model: Any) -> int:
    """Softmax(MatMul(Mul(q, s), k)) -> Softmax(Div(MatMul(q, k), 1/s)) for scalar constant s."""
    from onnx import helper, numpy_helper

    def one(g: _Graph) -> bool:
        for matmul in g.graph.node:
            if matmul.op_type != "MatMul":
                continue
            mul = g.producer.get(matmul.input[0])
            softmax = g.only_consumer(matmul.output[0])
            if mul is None or mul.op_type != "Mul" or softmax is None or softmax.op_type != "Softmax":
                continue
            if g.only_consumer(mul.output[0]) is not matmul:
                continue
            scales = [(i, g.scalar(name)) for i, name in enumerate(mul.input) if g.scalar(name)]
            if len(scales) != 1:
                continue
            index, scale = scales[0]
            q = mul.input[1 - index]
            unscaled = f"{matmul.output[0]}_unscaled"
            divisor = f"{matmul.output[0]}_divisor"
            model.graph.initializer.append(numpy_helper.from_array(np.array(1.0 / scale, dtype=np.float32), divisor))
            new_matmul = helper.make_node("MatMul", [q, matmul.input[1]], [unscaled], name=matmul.name)
            div = helper.make_node("Div", [unscaled, divisor], [matmul.output[0]], name=f"{matmul.name}_scale")
            g.replace([mul, matmul], [new_matmul, div])
            return True
        return False

    return _until_done(model, one)


EMBED_FORMS = ("EmbedLayerNormalization", "SkipLayerNormalization")


def fuse_embed_layer_norm(model: Any, form: str = "EmbedLayerNormalization") -> int:
    """LayerNormalization(Gather(W, ids) + Gather(P, pos), gamma, beta) -> EmbedLayerNormalization (one kernel:
    gathers, add, normalise), or with `form="SkipLayerNormalization"` the two Gathers feeding SkipLayerNormalization
    (onnxruntime's vectorised add + normalise kernel)."""
    from onnx import helper

    if form not in EMBED_FORMS:
        raise ValueError(f"form must be one of {EMBED_FORMS}, got {form!r}")

    def one(g: _Graph) -> bool:
        for norm, add in _normalized_sums(g):
            gathers = [g.producer.get(name) for name in add.input]
            if not all(
                x is not None
                and x.op_type == "Gather"
                and x.input[0] in g.initializers
                and len(g.initializers[x.input[0]].dims) == 2
                and g.only_consumer(x.output[0]) is add
                for x in gathers
            ):
                continue
            word, position = gathers
            if form == "SkipLayerNormalization":
                g.replace([add, norm], [_skip_layer_norm(word.output[0], position.output[0], norm)])
                return True
            # inputs: input_ids, segment_ids, word, position, segment table, gamma, beta, mask, position_ids
            inputs = [word.input[1], "", word.input[0], position.input[0], "", *norm.input[1:3], "", position.input[1]]
            embed = helper.make_node(
                "EmbedLayerNormalization",
                inputs,
                [norm.output[0], f"{norm.output[0]}_mask_index"],
                name=f"{norm.name or norm.output[0]}_EmbedLayerNorm",
                domain=ORT_DOMAIN,
                epsilon=_epsilon(norm),
            )
            g.replace([word, position, add, norm], [embed])
            return True
        return False

    return _until_done(model, one)


def _skip_layer_norm(x: str, skip: str, norm: Any) -> Any:
    """com.microsoft SkipLayerNormalization(x, skip, gamma, beta) replacing LayerNormalization `norm`."""
    from onnx import helper

    return helper.make_node(
        "SkipLayerNormalization",
        [x, skip, *norm.input[1:3]],
        [norm.output[0]],
        name=f"{norm.name or norm.output[0]}_SkipLayerNorm",
        domain=ORT_DOMAIN,
        epsilon=_epsilon(norm),
    )


def fuse_broadcast_skip_layer_norm(model: Any) -> int:
    """LayerNormalization(x + C) with C a constant [T, D] (the second embedding pass's position + type rows) ->
    SkipLayerNormalization(x, C): one pass in FP16 instead of an FP32 LayerNorm between two Casts."""
    from onnx import numpy_helper

    def one(g: _Graph) -> bool:
        for norm, add in _normalized_sums(g):
            values = [g.constant(name) for name in add.input]
            if sum(v is not None for v in values) != 1:
                continue
            k = 0 if values[0] is not None else 1
            value, x = values[k], add.input[1 - k]
            if value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[0] != 1):
                continue
            if g.producer.get(x) is not None and g.producer[x].op_type == "Gather":
                continue  # a slot's embedding pass: fuse_embed_layer_norm's job
            skip = add.input[k]
            if skip not in g.initializers:  # fold the constant subgraph into one [T, D] initializer
                skip = f"{norm.output[0]}_skip"
                model.graph.initializer.append(numpy_helper.from_array(value.reshape(value.shape[-2:]), skip))
            g.replace([add, norm], [_skip_layer_norm(x, skip, norm)])
            return True
        return False

    return _until_done(model, one)


def sum_slot_outputs(model: Any) -> int:
    """A chain of 2-input Adds over 3+ per-slot embedding LayerNorm outputs -> one Sum node."""
    from onnx import helper

    g = _Graph(model)

    def is_slot(name: str) -> bool:
        node = g.producer.get(name)
        if node is None:
            return False
        if node.op_type == "EmbedLayerNormalization":
            return True
        return node.op_type == "SkipLayerNormalization" and all(
            g.producer.get(i) is not None and g.producer[i].op_type == "Gather" for i in node.input[:2]
        )

    def chain(add: Any) -> tuple[list[str], list[Any]] | None:
        """(leaf inputs, Add nodes) of the left-deep chain ending at `add`, if every leaf is a slot."""
        left, right = add.input
        if not is_slot(right):
            return None
        if is_slot(left):
            return [left, right], [add]
        inner = g.producer.get(left)
        if inner is None or inner.op_type != "Add" or g.only_consumer(left) is not add:
            return None
        found = chain(inner)
        return None if found is None else ([*found[0], right], [*found[1], add])

    rewritten = 0
    roots = []
    for add in g.graph.node:
        if add.op_type != "Add":
            continue
        user = g.only_consumer(add.output[0])
        if user is not None and user.op_type == "Add" and user.input[0] == add.output[0] and chain(user):
            continue  # not the end of its chain
        found = chain(add)
        if found and len(found[0]) >= 3:
            roots.append((add, found))
    for add, (leaves, adds) in roots:
        g.replace(adds, [helper.make_node("Sum", leaves, [add.output[0]], name=f"{add.name or add.output[0]}_Sum")])
        rewritten += 1
    return rewritten


def transpose_matmul_weights(model: Any) -> int:
    """MatMul(x, W) with W a constant [K, N] -> FusedMatMul(x, W^T, transB=1): the weight laid out [N, K] as in
    PyTorch's Linear, so cuBLAS gets the transposed-B problem PyTorch gives it (another kernel choice)."""
    from onnx import helper, numpy_helper

    g = _Graph(model)
    done = 0
    for node in list(g.graph.node):
        if node.op_type != "MatMul" or node.input[1] not in g.initializers:
            continue
        weight = g.initializers[node.input[1]]
        if len(weight.dims) != 2:
            continue
        name = f"{node.input[1]}_transposed"
        if name not in g.initializers:
            array = numpy_helper.to_array(weight)
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array.T), name))
            g.initializers[name] = model.graph.initializer[-1]
        fused = helper.make_node(
            "FusedMatMul",
            [node.input[0], name],
            list(node.output),
            name=f"{node.name}_transB",
            domain=ORT_DOMAIN,
            transB=1,
        )
        g.replace([node], [fused])
        done += 1
    used = {i for n in model.graph.node for i in n.input}
    for init in list(model.graph.initializer):
        if init.name not in used:
            model.graph.initializer.remove(init)
    return done
