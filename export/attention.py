"""Fused attention for the graphs ONNX Runtime runs: verification and the ONNX Runtime backend.

The exported graphs keep scaled-dot-product attention as the exporter writes it,
``MatMul(q * s, kᵀ * s) -> Softmax -> MatMul(·, v)``: TensorRT recognises that pattern and fuses it
into one flash-attention kernel, so the ONNX TensorRT parses stays as it is.

ONNX Runtime does not fuse it: its CPU provider materialises every score matrix. The denoising
UNet's reference attention has 4096 queries against up to (1 + 4) x 4096 keys at 512², per head and
per frame of the 16-frame pile: 5.4 GB per layer with one head, 43 GB with the released 8 heads.
That is what OOM-killed `build --backend onnxruntime` (issue 11). ONNX Runtime's
``com.microsoft.MultiHeadAttention`` computes attention blockwise on the CPU (its flash-attention
path, float32) and on CUDA without the score matrix: measured on this 2-core machine for one such
layer (16 x 4096 queries x 20480 keys, one 32-wide head), 0.28 GB peak and 3.9 s against 5.7 GB and
21 s for the plain pattern.

:func:`fuse_attention` rewrites a copy of a graph: each exact plain-attention pattern becomes one
``MultiHeadAttention`` node. Heads are folded into the batch (``num_heads=1``, shapes computed in
the graph, so no static shape is needed) and q and k keep the exporter's pre-scaling by ``s``
(``scale=1``), so the fused node computes the same ``softmax(qs·(ks)ᵀ)·v`` as the plain one. fp16
attention is computed in float32 from the fp16 q/k/v and rounded back (the CPU flash path is
float32 only; the plain fp16 graph on the CPU provider computes these MatMuls in float32 too).
Every other node is the shipped graph's, node for node, and the initializers are untouched (the
fused file of a large export reads the same ``model.onnx.data``).

What this leaves unverified: ONNX Runtime never runs the plain attention nodes of a rewritten
graph at the exported shapes. The rewrite is exact by construction (the pattern, including both
scalings by one factor and a last-axis Softmax, is matched exactly or left alone), and
``tests/test_export.py`` runs both graphs of every network at 128² and holds them equal.
"""
from __future__ import annotations

from collections import defaultdict

MS_DOMAIN = "com.microsoft"
FUSED_SUFFIX = "__fused_attention"


def _producers(graph) -> dict[str, object]:
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph) -> dict[str, list]:
    users: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    for value in graph.output:
        users[value.name].append(None)  # a graph output counts as a consumer
    return users


def _attribute(node, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            import onnx

            return onnx.helper.get_attribute_value(attribute)
    return default


def _same_value(a: str, b: str, producers, depth: int = 4) -> bool:
    """Two tensors that are the same value: one name, or identical nodes (op, attributes) of the same
    values, as the exporter writes ``sqrt(scale)`` (and the fp16 conversion its Cast) once for q and
    once for k."""
    if a == b:
        return True
    x, y = producers.get(a), producers.get(b)
    return (depth > 0 and x is not None and y is not None and x.op_type == y.op_type and x.domain == y.domain
            and len(x.input) == len(y.input) and len(x.output) == len(y.output) == 1
            and [attr.SerializeToString() for attr in x.attribute] == [attr.SerializeToString() for attr in y.attribute]
            and all(_same_value(i, j, producers, depth - 1) for i, j in zip(x.input, y.input)))


def _match(softmax, producers, consumers, float16: set[str]):
    """The plain-attention pattern around ``softmax``, or None when it is not exactly that:
    ``MatMul(Mul(q, s), Mul(Transpose(k', perm), s)) -> Softmax(last axis) -> MatMul(·, v)``, where the
    Transpose moves k's token axis last (the exporter may merge it with the head split, so ``perm``
    is read rather than assumed: k = Transpose(k', perm with its last two entries swapped))."""
    scores = producers.get(softmax.input[0])
    users = consumers.get(softmax.output[0], [])
    if scores is None or scores.op_type != "MatMul" or len(users) != 1 or users[0] is None:
        return None
    out = users[0]
    if out.op_type != "MatMul" or out.input[0] != softmax.output[0] or len(consumers.get(scores.output[0], [])) != 1:
        return None
    q_mul, k_mul = (producers.get(name) for name in scores.input)
    if q_mul is None or k_mul is None or q_mul.op_type != "Mul" or k_mul.op_type != "Mul":
        return None
    if len(consumers.get(k_mul.output[0], [])) != 1:
        return None
    k_transpose = producers.get(k_mul.input[0])
    if k_transpose is None or k_transpose.op_type != "Transpose" or len(_attribute(k_transpose, "perm", [])) < 2:
        return None
    if not _same_value(q_mul.input[1], k_mul.input[1], producers):
        return None
    perm = list(_attribute(k_transpose, "perm"))
    if _attribute(softmax, "axis", -1) not in (-1, len(perm) - 1):
        return None
    k_perm = perm[:-2] + [perm[-1], perm[-2]]
    only_user = len(consumers.get(k_transpose.output[0], [])) == 1
    return {"q_scaled": q_mul.output[0], "k": k_transpose.input[0], "k_perm": k_perm, "scale": k_mul.input[1],
            "v": out.input[1], "out": out.output[0],
            "remove": [scores, softmax, out, k_mul] + ([k_transpose] if only_user else []),
            "fp16": out.output[0] in float16, "name": softmax.name or out.name}


def fuse_attention(model) -> tuple[object, int]:
    """A copy of ``model`` with every plain attention as ``com.microsoft.MultiHeadAttention``.

    Returns (the new model, the number of attention blocks fused). ``model`` may be a graph without
    initializer data; only nodes change. The fp16-ness of an attention is read from the graph's
    value types (``onnx.shape_inference`` on the graph without data).
    """
    import onnx
    from onnx import TensorProto, helper

    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    graph = fused.graph
    typed = onnx.shape_inference.infer_shapes(_without_initializer_data(fused))
    float16 = {v.name for v in (*typed.graph.value_info, *typed.graph.output, *typed.graph.input)
               if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    producers, consumers = _producers(graph), _consumers(graph)
    matches = [m for node in graph.node if node.op_type == "Softmax"
               for m in [_match(node, producers, consumers, float16)] if m is not None]
    if not matches:
        return fused, 0
    removed = {id(node) for m in matches for node in m["remove"]}
    replacement = {id(m["remove"][2]): m for m in matches}  # inserted where the second MatMul was
    constants = [helper.make_node("Constant", [], [f"attn{FUSED_SUFFIX}_minus1"], name=f"attn{FUSED_SUFFIX}_minus1",
                                  value=helper.make_tensor("v", TensorProto.INT64, [1], [-1]))]
    nodes = list(constants)
    for node in graph.node:
        if id(node) in replacement:
            nodes.extend(_fused_nodes(replacement[id(node)], f"attn{FUSED_SUFFIX}_minus1"))
        elif id(node) not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(op.domain == MS_DOMAIN for op in fused.opset_import):
        fused.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return fused, len(matches)


def _without_initializer_data(model):
    """A lightweight copy for shape inference: initializers keep dims and types, not data."""
    import onnx

    light = onnx.ModelProto()
    light.CopyFrom(model)
    for tensor in light.graph.initializer:
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.ClearField("int64_data")
        tensor.ClearField("int32_data")
        tensor.ClearField("double_data")
        tensor.ClearField("external_data")
        tensor.data_location = onnx.TensorProto.DEFAULT
    return light


def _fused_nodes(match: dict, minus1: str) -> list:
    """(…, heads, S, d) q/k/v -> (B*heads, S, d) -> MultiHeadAttention(num_heads=1) -> back to 4-D."""
    from onnx import TensorProto, helper

    p = f"{match['name']}{FUSED_SUFFIX}"
    k = match["k"]
    if match["k_perm"] != sorted(match["k_perm"]):
        nodes = [helper.make_node("Transpose", [k], [f"{p}/k"], name=f"{p}/k", perm=match["k_perm"])]
        k = f"{p}/k"
    else:
        nodes = []
    nodes.append(helper.make_node("Mul", [k, match["scale"]], [f"{p}/k_scaled"], name=f"{p}/k_scale"))
    folded = {}
    for role, source in (("q", match["q_scaled"]), ("k", f"{p}/k_scaled"), ("v", match["v"])):
        nodes += [
            helper.make_node("Shape", [source], [f"{p}/{role}_tail"], name=f"{p}/{role}_tail", start=-2),
            helper.make_node("Concat", [minus1, f"{p}/{role}_tail"], [f"{p}/{role}_3d_shape"],
                             name=f"{p}/{role}_3d_shape", axis=0),
            helper.make_node("Reshape", [source, f"{p}/{role}_3d_shape"], [f"{p}/{role}_3d"], name=f"{p}/{role}_3d"),
        ]
        folded[role] = f"{p}/{role}_3d"
        if match["fp16"]:
            nodes.append(helper.make_node("Cast", [folded[role]], [f"{p}/{role}_f32"], name=f"{p}/{role}_f32",
                                          to=TensorProto.FLOAT))
            folded[role] = f"{p}/{role}_f32"
    attended = f"{p}/attended"
    nodes.append(helper.make_node("MultiHeadAttention", [folded["q"], folded["k"], folded["v"]], [attended],
                                  name=f"{p}/mha", domain=MS_DOMAIN, num_heads=1, scale=1.0))
    if match["fp16"]:
        nodes.append(helper.make_node("Cast", [attended], [f"{p}/attended_f16"], name=f"{p}/attended_f16",
                                      to=TensorProto.FLOAT16))
        attended = f"{p}/attended_f16"
    # output shape: q's leading axes and S, v's head width
    nodes += [
        helper.make_node("Shape", [match["q_scaled"]], [f"{p}/lead"], name=f"{p}/lead", end=-1),
        helper.make_node("Shape", [match["v"]], [f"{p}/width"], name=f"{p}/width", start=-1),
        helper.make_node("Concat", [f"{p}/lead", f"{p}/width"], [f"{p}/out_shape"], name=f"{p}/out_shape", axis=0),
        helper.make_node("Reshape", [attended, f"{p}/out_shape"], [match["out"]], name=f"{p}/out"),
    ]
    return nodes
