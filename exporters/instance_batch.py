"""The instance-batched signature: input_ids int32 [M, L], M instances (dynamic) -> one output per instance.

Built around a grouped ONNX ([B, N, L] -> [B, N, ...]) of any precision: a prologue pads M up to
G*N rows with the bundle's filler instance (G = ceil(M / N)) and reshapes to [G, N, L]; the
grouped graph runs unchanged; an epilogue reshapes to [G*N, ...] and slices the first M rows.
That is `muxdeploy.runtimes.packing.pack_groups` / `unpack_groups` inside the graph, so any server's plain
batcher (Triton, Ray, onnxruntime) batches single instances and the graph does the N-slot packing.

Why ONNX and not a torch wrapper: torch.export (2.13) cannot keep M symbolic through the pad:
`(-M) % N` and `ceil(M/N)*N` rows make its shape solver emit guards it then cannot prove
(G != 1, M >= example size), so the traced program fails for some M. Wrapping the grouped ONNX
also serves the FP16 and INT8 variants with the same code.

This module does the graph surgery (`wrap_instance_batch`) and the one write -> prove -> facts step
(`write_instance_batch`) that `export --instance-batch`, `export-triton` and `muxdeploy.build.build_instance_engine`
share; the comparison itself is exporters/parity.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import INSTANCES, ROLE_INSTANCE_BATCH, Manifest
from muxdeploy.exporters.parity import InstanceBatchParityError, instance_feeds, instance_parity

_P = "instance_batch/"  # prefix for the names this module adds, so they cannot clash with the grouped graph's


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename a tensor everywhere in a graph's nodes and value_info (subgraphs included)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for attr in node.attribute:
            if attr.g is not None and attr.HasField("g"):
                _rename(attr.g, old, new)
            for sub in attr.graphs:
                _rename(sub, old, new)
    for vi in graph.value_info:
        if vi.name == old:
            vi.name = new


def wrap_instance_batch(grouped: Any, num_instances: int, filler: np.ndarray) -> Any:
    """A new ModelProto taking input_ids [M, L] around `grouped` (a ModelProto taking [B, N, L])."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(grouped)
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise UserInputError(
            f"the grouped model has {len(graph.input)} inputs and {len(graph.output)} outputs; "
            "--instance-batch supports one input_ids input and one output"
        )
    in_vi, out_vi = graph.input[0], graph.output[0]
    in_name, out_name = in_vi.name, out_vi.name
    in_type = in_vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in in_type.shape.dim]
    if len(dims) != 3 or dims[1] != num_instances or dims[2] is None:
        raise UserInputError(f"the grouped model's input {in_name} has shape {dims}; expected [B, {num_instances}, L]")
    seq_len = int(dims[2])
    filler = np.asarray(filler).reshape(1, seq_len).astype(onnx.helper.tensor_dtype_to_np_dtype(in_type.elem_type))
    out_type = out_vi.type.tensor_type
    out_rank = len(out_type.shape.dim)

    grouped_in, grouped_out = _P + "groups", _P + "group_logits"
    _rename(graph, in_name, grouped_in)
    _rename(graph, out_name, grouped_out)

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, _P + name))
        return _P + name

    n_c = const("n", np.array([num_instances], dtype=np.int64))
    n_minus_1 = const("n_minus_1", np.array([num_instances - 1], dtype=np.int64))
    len_c = const("seq_len", np.array([seq_len], dtype=np.int64))
    minus_1 = const("minus_1", np.array([-1], dtype=np.int64))
    zero = const("zero", np.array([0], dtype=np.int64))
    fill_c = const("filler", filler)

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        return helper.make_node(op, inputs, [_P + output], name=_P + output, **attrs)

    pro = [
        node("Shape", [in_name], "m", start=0, end=1),  # [1] int64: M
        node("Add", [_P + "m", n_minus_1], "m_plus"),
        node("Div", [_P + "m_plus", n_c], "g"),  # G = ceil(M / N), M >= 1
        node("Mul", [_P + "g", n_c], "rows"),
        node("Sub", [_P + "rows", _P + "m"], "pad"),
        node("Concat", [_P + "pad", len_c], "fill_shape", axis=0),
        node("Expand", [fill_c, _P + "fill_shape"], "fill"),
        node("Concat", [in_name, _P + "fill"], "padded", axis=0),
        node("Concat", [_P + "g", n_c, len_c], "group_shape", axis=0),
    ]
    pro.append(helper.make_node("Reshape", [_P + "padded", _P + "group_shape"], [grouped_in], name=_P + "to_groups"))
    epi = [
        node("Shape", [grouped_out], "tail_shape", start=2),
        node("Concat", [minus_1, _P + "tail_shape"], "flat_shape", axis=0),
        node("Reshape", [grouped_out, _P + "flat_shape"], "flat"),
    ]
    epi.append(helper.make_node("Slice", [_P + "flat", zero, _P + "m", zero], [out_name], name=_P + "to_instances"))
    nodes = [*pro, *graph.node, *epi]
    del graph.node[:]
    graph.node.extend(nodes)

    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(in_name, in_type.elem_type, ["M", seq_len]))
    out_dims: list[Any] = ["M"] + [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in out_type.shape.dim[2:]
    ]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(out_name, out_type.elem_type, out_dims))
    if out_rank < 2:
        raise UserInputError(f"the grouped model's output {out_name} has rank {out_rank}; expected [B, N, ...]")
    onnx.checker.check_model(model)
    return model


def make_instance_batch(grouped_onnx: Path, out_path: Path, num_instances: int, filler: np.ndarray) -> Path:
    """Write the instance-batched ONNX for `grouped_onnx` to `out_path` (atomically); returns out_path."""
    import onnx

    from muxdeploy.core.fsutil import write_bytes_atomic

    model = wrap_instance_batch(onnx.load(str(grouped_onnx)), num_instances, filler)
    write_bytes_atomic(out_path, model.SerializeToString())
    return out_path


def instance_output_shape(grouped_shape: list[Any]) -> list[Any]:
    """The manifest output shape of the instance-batched graph from the grouped one ([B, N, ...] -> [M, ...])."""
    return ["M", *grouped_shape[2:]]


def write_instance_batch(grouped_onnx: Path, out_path: Path, manifest: Manifest, tolerance: float) -> dict[str, Any]:
    """Write the instance-batched graph of `grouped_onnx` to `out_path` and prove it equals the grouped graph.

    Make, feed every M in 1..min(4N, max) and the largest M (max_batch * N), compare on onnxruntime CPU,
    and return the artifact's manifest facts (for `Manifest.add_artifact`); raises InstanceBatchParityError
    when the two differ by more than `tolerance`.
    """
    n, seq_len = manifest.num_instances, manifest.seq_len
    make_instance_batch(grouped_onnx, out_path, n, manifest.filler)
    max_instances = manifest.max_batch * n
    feeds = instance_feeds(manifest.vocab_size or 2, manifest.pad_token_id, n, seq_len, max_instances)
    diff = instance_parity(out_path, grouped_onnx, feeds, n, manifest.filler)
    if not diff <= tolerance:
        raise InstanceBatchParityError(
            f"the instance-batched {out_path.name} differs from {grouped_onnx.name} by {diff:.3g} "
            f"(> {tolerance:g}); report this with the checkpoint's config"
        )
    out = manifest.data["outputs"][0]
    return {
        "opset": manifest.data.get("opset"),
        "role": ROLE_INSTANCE_BATCH,
        "signature": INSTANCES,
        "inputs": [{"name": manifest.input_name, "dtype": "int32", "shape": ["M", seq_len]}],
        "outputs": [{"name": out["name"], "dtype": out["dtype"], "shape": instance_output_shape(out["shape"])}],
        "max_instances": max_instances,
        "parity": {
            "max_abs_diff": diff,
            "reference": "grouped-onnx-cpu",
            "candidate": "onnxruntime-cpu",
            "sizes": len(feeds),
        },
    }
