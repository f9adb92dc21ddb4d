"""Float16 ONNX graphs: conversion of a traced fp32 graph, and an fp16-storage emulation for checking it.

Why convert rather than trace the half module: tracing runs the module, and CPUs without native
float16 convolutions (most x86) run half convs through a naive kernel -- 50 s for one 256x256 image
through the LivePortrait extractor. The conversion gives the graph the half trace would give (every
float activation, weight and constant float16) in seconds on any machine, with two explicit rules:

* **keep_fp32 islands** (``NetworkSpec.keep_fp32``): every node inside a listed module computes in
  float32 on float32 inputs (casts are inserted at the island boundary; island weights keep their
  float32 values). Parts that the modules compute in float32 *by design* (diffusers' timestep
  sinusoid, LivePortrait's Fp32LayerNorm) must be listed too, so the graph matches the half model.
* **shape arithmetic stays float32**: float tensors that do not depend on the input data (computed
  from constants or from ``Shape``) keep their type and are cast (or, for constants and weights,
  converted by value) where an fp16 node consumes them; sizes such as 4097 are not representable
  in float16.

The result is strongly typed (TensorRT 10+ ``STRONGLY_TYPED``): the dtype of every tensor is fixed
in the graph and the builder does not choose precisions.

ONNX Runtime's CPU provider has float16 kernels for data movement only (Reshape, Transpose,
LayerNormalization, ...); it runs Conv, MatMul, Softmax, normalisations ... of an fp16 graph by
inserting casts to float32 *and removing the intermediate float16 roundings*, so running the fp16
file there checks the graph's function and its float16 weights, not float16 arithmetic.
:func:`emulate_fp16_storage` builds a float32 twin of an fp16 graph in which every float16 tensor is
rounded through an explicit ``Cast(float16) -> Cast(float32)`` pair (ONNX Runtime keeps explicit
casts): each op computes in float32 and stores its result as float16, like GPU kernels with
float32 accumulation; overflow to inf and the storage roundings are therefore exercised.
"""
from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = 65504.0

# Inputs whose type is independent of the node's compute type (left as they are).
_TYPE_FREE_INPUTS: Mapping[str, Callable[[int], bool]] = {
    "Shape": lambda i: True,
    "Size": lambda i: True,
    "Cast": lambda i: True,
    "Resize": lambda i: i in (1, 2),  # roi, scales: tensor(float)
    "Upsample": lambda i: i == 1,
}
# Outputs that never carry input data (shape/size of a tensor).
_DATA_FREE_OPS = {"Shape", "Size"}
# Ops whose output dtype comes from an attribute and that the conversion does not handle (Cast,
# Constant and ConstantOfShape are handled).
_UNSUPPORTED_TYPED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike",
                      "Bernoulli", "Multinomial", "CastLike"}


class ConversionError(ValueError):
    """The graph cannot be converted to float16 faithfully (e.g. a weight outside the float16 range)."""


# ---- reading tensors -------------------------------------------------------------------------------------
class TensorStore:
    """Lazy access to the initializer values of an ONNX file (in the proto or in external data files)."""

    def __init__(self, model: onnx.ModelProto, base_dir: Path) -> None:
        self.base_dir = Path(base_dir)
        self.tensors = {t.name: t for t in model.graph.initializer}

    def array(self, name: str) -> np.ndarray:
        tensor = self.tensors[name]
        if tensor.data_location != TensorProto.EXTERNAL:
            return numpy_helper.to_array(tensor)
        info = {entry.key: entry.value for entry in tensor.external_data}
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        with open(self.base_dir / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            data = np.frombuffer(f.read(count * np.dtype(dtype).itemsize), dtype=dtype)
        return data.reshape(tuple(tensor.dims)).copy()


def placeholder(name: str, data_type: int, dims: Iterable[int]) -> TensorProto:
    """An initializer without data: values are provided when the model is written."""
    tensor = TensorProto()
    tensor.name, tensor.data_type = name, data_type
    tensor.dims.extend(list(dims))
    return tensor


def without_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers are placeholders (name, type, dims only)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.initializer[:]
    out.graph.initializer.extend(placeholder(t.name, t.data_type, t.dims) for t in model.graph.initializer)
    return out


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor (inputs, initializers, outputs, inferred intermediates)."""
    inferred = onnx.shape_inference.infer_shapes(without_data(model), strict_mode=True)
    types = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        types[value.name] = value.type.tensor_type.elem_type
    for tensor in model.graph.initializer:
        types[tensor.name] = tensor.data_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


# ---- module scopes of nodes ------------------------------------------------------------------------------
class ModuleScopes:
    """Maps a TorchScript-exported node name (``/net/detector/stages.0/stages.0.0/grn/ReduceL2``) to
    the qualified name of the module it was traced in (``net.detector.stages.0.0.grn``).

    Each path segment names a called module relative to the last called ancestor (containers that
    are never called, such as ``ModuleList``, leave no segment); the module is the closest descendant
    of the current one whose qualified name ends with the segment.
    """

    def __init__(self, module_names: Iterable[str]) -> None:
        self.by_suffix: dict[str, list[str]] = defaultdict(list)
        for name in module_names:
            if not name:
                continue
            parts = name.split(".")
            for i in range(len(parts)):
                self.by_suffix[".".join(parts[i:])].append(name)
        self._cache: dict[str, str] = {}

    def module_of(self, node_name: str) -> str:
        scope = node_name.rsplit("/", 1)[0] if node_name.startswith("/") else ""
        if scope not in self._cache:
            current = ""
            for segment in scope.split("/")[1:]:
                prefix = current + "." if current else ""
                candidates = [q for q in self.by_suffix.get(segment, ()) if q.startswith(prefix)
                              and (q == segment or q.endswith("." + segment))]
                if not candidates:
                    break
                current = min(candidates, key=len)
            self._cache[scope] = current
        return self._cache[scope]


def island_modules(named_modules: Iterable[tuple[str, object]], component_prefix: str,
                   patterns: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """pattern -> qualified names (in the wrapper) of the modules it keeps in float32.

    Patterns are relative to the component module (registered at ``component_prefix`` in the wrapper):
    an ``fnmatch`` glob over module paths, or ``class:Name``.
    """
    modules = list(named_modules)
    found: dict[str, list[str]] = {}
    for pattern, _reason in patterns:
        names = []
        for qualified, module in modules:
            if component_prefix and not (qualified == component_prefix or qualified.startswith(component_prefix + ".")):
                continue
            relative = qualified[len(component_prefix) + 1:] if component_prefix else qualified
            if pattern.startswith("class:"):
                hit = type(module).__name__ == pattern[len("class:"):]
            else:
                hit = bool(relative) and fnmatch.fnmatchcase(relative, pattern)
            if hit:
                names.append(qualified)
        found[pattern] = names
    return found


# ---- fp32 -> fp16 ------------------------------------------------------------------------------------------
@dataclass
class Fp16Graph:
    """A converted graph and how to fill its initializers from the fp32 source."""

    model: onnx.ModelProto  # initializers are placeholders
    initializers: dict[str, tuple[str, np.dtype]]  # name -> (source initializer, dtype to store)
    island_nodes: dict[str, list[str]] = field(default_factory=dict)  # keep_fp32 pattern -> node names
    inserted_casts: int = 0

    def values(self, store: TensorStore) -> Callable[[TensorProto], np.ndarray]:
        def value(tensor: TensorProto) -> np.ndarray:
            source, dtype = self.initializers[tensor.name]
            array = store.array(source)
            converted = array.astype(dtype)
            if dtype == np.float16 and np.isfinite(array).all() and not np.isfinite(converted).all():
                raise ConversionError(f"initializer {source!r} has values beyond the float16 range "
                                      f"(max |x| = {float(np.abs(array).max()):.4g}); keep its module in fp32")
            return converted
        return value


def _data_dependent(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from the graph inputs' data or from float weights: the network's arithmetic.

    The complement is shape arithmetic (from ``Shape``/``Size`` and small constants, e.g. the
    attention scale 1/sqrt(head_dim)), which stays float32.
    """
    live = {value.name for value in model.graph.input}
    live.update(t.name for t in model.graph.initializer if t.data_type in (FLOAT, FLOAT16))
    for node in model.graph.node:
        if node.op_type not in _DATA_FREE_OPS and any(name in live for name in node.input if name):
            live.update(o for o in node.output if o)
    return live


def _constant_value(node: onnx.NodeProto) -> TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
    return None


def convert_to_fp16(model: onnx.ModelProto, io_types: Mapping[str, int],
                    in_island: Callable[[str], str | None]) -> Fp16Graph:
    """Convert a traced fp32 graph to a strongly typed fp16 graph.

    Args:
        model: the fp32 graph (initializers may be placeholders or external; values come from ``store``).
        io_types: graph input/output name -> ONNX elem type wanted (float16, or float32 for
            ``TensorSpec.keep_fp32`` tensors); non-float tensors are left alone.
        in_island: node name -> the keep_fp32 pattern whose module contains it, or None.

    Weight values are not read here: :meth:`Fp16Graph.values` converts them (and refuses weights
    beyond the float16 range) while the file is written.
    """
    conversion = _Conversion(model, io_types)
    for node in model.graph.node:
        conversion.add_node(node, in_island)
    conversion.type_graph_outputs()
    conversion.keep_fp32_only_weights_named()
    return conversion.result()


class _Conversion:
    """The state of one :func:`convert_to_fp16`: the new nodes, every tensor's new type, and the weights' plan."""

    def __init__(self, model: onnx.ModelProto, io_types: Mapping[str, int]) -> None:
        self.model, self.io_types = model, io_types
        self.types = elem_types(model)
        self.live = _data_dependent(model)
        graph = model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        # The tracer deduplicates equal weights through Identity nodes; read through them, so the weight
        # itself is converted instead of a float32 copy being cast at run time.
        graph_outputs = {v.name for v in graph.output}
        self.aliases = {node.output[0]: node.input[0] for node in graph.node
                        if node.op_type == "Identity" and node.input[0] in self.initializers
                        and node.output[0] not in graph_outputs}
        self.new_type: dict[str, int] = {}
        for value in graph.input:
            if self.types.get(value.name) == FLOAT:
                self.new_type[value.name] = io_types.get(value.name, FLOAT16)
        for name, tensor in self.initializers.items():
            if tensor.data_type != FLOAT:  # float weights are typed per use (see `use`)
                self.new_type[name] = tensor.data_type
        self.out_nodes: list[onnx.NodeProto] = []
        self.init_plan: dict[str, tuple[str, np.dtype]] = {}
        self.init_types: dict[str, int] = {}
        self.converted: dict[tuple[str, int], str] = {}
        self.constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
        self.island_nodes: dict[str, list[str]] = defaultdict(list)
        self.casts = 0

    def use(self, name: str, want: int) -> str:
        """``name`` as a tensor of type ``want`` (converting weights/constants by value, else a Cast)."""
        if self.new_type.get(name) == want:
            return name
        key = (name, want)
        if key in self.converted:
            return self.converted[key]
        suffix = "__fp16" if want == FLOAT16 else "__fp32"
        if name in self.initializers:
            # Weights: the fp16 version keeps the name (TensorRT refit / readability), fp32 users get a copy.
            target = name if want == FLOAT16 else name + suffix
            self.init_plan[target] = (name, np.dtype(np.float16 if want == FLOAT16 else np.float32))
            self.init_types[target] = want
        elif name in self.constants:
            target = name + suffix
            value = numpy_helper.to_array(_constant_value(self.constants[name]))
            cast = value.astype(np.float16 if want == FLOAT16 else np.float32)
            if np.isfinite(value).all() and not np.isfinite(cast).all():
                raise ConversionError(f"constant {name!r} (max |x| = {float(np.abs(value).max()):.4g}) does not fit "
                                      "float16; keep the module that uses it in fp32")
            self.out_nodes.append(helper.make_node("Constant", [], [target], name=self.constants[name].name + suffix,
                                                   value=numpy_helper.from_array(cast, target)))
        else:
            target = name + ("__to_fp16" if want == FLOAT16 else "__to_fp32")
            self.out_nodes.append(helper.make_node("Cast", [name], [target], name=target, to=want))
            self.casts += 1
        self.new_type[target] = want
        self.converted[key] = target
        return target

    def add_node(self, node: onnx.NodeProto, in_island: Callable[[str], str | None]) -> None:
        """``node`` in its new types: float16 where it computes on the data outside a keep_fp32 island."""
        types = self.types
        if node.op_type == "Identity" and node.output[0] in self.aliases:
            return
        if any(name in self.aliases for name in node.input):
            node = _with_inputs(node, [self.aliases.get(name, name) for name in node.input])
        if node.op_type in _UNSUPPORTED_TYPED and any(types.get(o) == FLOAT for o in node.output):
            raise ConversionError(f"node {node.name} ({node.op_type}) has an attribute-typed float output")
        island = in_island(node.name)
        if island is not None:
            self.island_nodes[island].append(node.name)
        data = any(o in self.live for o in node.output if o)
        target = FLOAT16 if data and island is None else FLOAT
        new = onnx.NodeProto()
        new.CopyFrom(node)
        if node.op_type == "Constant":
            # Converted lazily, per consumer type (see `use`); the original stays for fp32 users.
            for o in node.output:
                self.new_type[o] = types.get(o, 0)
            self.out_nodes.append(new)
            return
        free = _TYPE_FREE_INPUTS.get(node.op_type, lambda i: False)
        for i, name in enumerate(node.input):
            if name and types.get(name) == FLOAT and not free(i):
                new.input[i] = self.use(name, target)
        if node.op_type == "Cast":
            to = next(a for a in new.attribute if a.name == "to")
            if to.i == FLOAT:
                to.i = target
        if node.op_type == "ConstantOfShape" and target == FLOAT16:
            raise ConversionError(f"node {node.name}: data-dependent ConstantOfShape is not supported")
        for o in node.output:
            if o and types.get(o) == FLOAT:
                self.new_type[o] = target
        self.out_nodes.append(new)

    def type_graph_outputs(self) -> None:
        """Graph outputs: the wanted type, through a final cast where the producer's type differs."""
        renames: dict[str, str] = {}
        tail: list[onnx.NodeProto] = []
        for value in self.model.graph.output:
            if self.types.get(value.name) != FLOAT:
                continue
            want = self.io_types.get(value.name, FLOAT16)
            if self.new_type.get(value.name) != want:
                inner = value.name + "__pre"
                renames[value.name] = inner
                tail.append(helper.make_node("Cast", [inner], [value.name], name=value.name + "__out", to=want))
                self.casts += 1
        if renames:
            for node in self.out_nodes:
                for i, name in enumerate(node.input):
                    node.input[i] = renames.get(name, name)
                for i, name in enumerate(node.output):
                    node.output[i] = renames.get(name, name)
        self.out_nodes.extend(tail)

    def keep_fp32_only_weights_named(self) -> None:
        """Initializers: a float weight used in float32 only (island weights) keeps its own name."""
        back = {}
        for name, tensor in self.initializers.items():
            if tensor.data_type != FLOAT:
                self.init_plan.setdefault(name, (name, helper.tensor_dtype_to_np_dtype(tensor.data_type)))
                self.init_types.setdefault(name, tensor.data_type)
            elif (name, FLOAT) in self.converted and (name, FLOAT16) not in self.converted:
                copy = self.converted[(name, FLOAT)]
                back[copy] = name
                self.init_plan[name] = self.init_plan.pop(copy)
                self.init_types[name] = self.init_types.pop(copy)
        if back:
            for node in self.out_nodes:
                for i, name in enumerate(node.input):
                    node.input[i] = back.get(name, name)
        used = {name for node in self.out_nodes for name in node.input}
        self.init_plan = {name: plan for name, plan in self.init_plan.items() if name in used}

    def result(self) -> Fp16Graph:
        """The converted model (initializers as placeholders), type-checked by ONNX shape inference."""
        result = onnx.ModelProto()
        result.CopyFrom(self.model)
        g = result.graph
        del g.node[:]
        g.node.extend(self.out_nodes)
        del g.initializer[:]
        g.initializer.extend(placeholder(name, self.init_types[name], self.initializers[source].dims)
                             for name, (source, _) in self.init_plan.items())
        del g.value_info[:]
        for value in [*g.input, *g.output]:
            if self.types.get(value.name) == FLOAT:
                value.type.tensor_type.elem_type = self.io_types.get(value.name, FLOAT16)
        _drop_unused_constants(g)
        onnx.shape_inference.infer_shapes(without_data(result), strict_mode=True)  # type check
        return Fp16Graph(result, self.init_plan, dict(self.island_nodes), self.casts)


def _with_inputs(node: onnx.NodeProto, inputs: list[str]) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.input[:]
    copy.input.extend(inputs)
    return copy


def _drop_unused_constants(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    keep = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


# ---- analysis ---------------------------------------------------------------------------------------------
def float32_compute_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes of a (converted) graph that compute on the input data in float32 (Casts excluded)."""
    types = elem_types(model)
    live = _data_dependent(model)
    return [node.name for node in model.graph.node
            if node.op_type != "Cast" and any(o in live and types.get(o) == FLOAT for o in node.output)]


def ort_fp32_fallback_ops(model: onnx.ModelProto) -> list[str]:
    """Op types of an fp16 graph for which ONNX Runtime's CPU provider has no float16 kernel (it runs
    them in float32 through inserted casts). Empty if the kernel registry cannot be read."""
    try:
        from onnxruntime.capi import _pybind_state

        kernels = _pybind_state.get_all_opkernel_def()
    except Exception:  # noqa: BLE001 -- private API; the list is informative only
        return []
    fp16_ops = {k.op_name for k in kernels
                if k.provider == "CPUExecutionProvider" and k.domain in ("", "ai.onnx")
                and any(t == "tensor(float16)" for types in k.type_constraints.values() for t in types)}
    types = elem_types(model)
    used = {node.op_type for node in model.graph.node
            if any(types.get(name) == FLOAT16 for name in node.input if name)}
    return sorted(used - fp16_ops)


# ---- fp16-storage emulation ---------------------------------------------------------------------------------
def emulate_fp16_storage(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.dtype]]:
    """A float32 twin of an fp16 graph that rounds every float16 tensor through explicit casts.

    Returns the model (initializer placeholders: the fp16 weights are to be stored as float32, an
    exact upcast) and initializer name -> dtype to store. Graph inputs keep their types (feed the
    same arrays); float16 graph outputs become float32 (holding float16-rounded values).
    """
    types = elem_types(model)
    nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}

    def rounded(name: str, produced: str) -> None:
        nodes.append(helper.make_node("Cast", [produced], [name + "__h"], name=name + "__round_h", to=FLOAT16))
        nodes.append(helper.make_node("Cast", [name + "__h"], [name], name=name + "__round_f", to=FLOAT))

    for value in model.graph.input:
        if types.get(value.name) == FLOAT16:
            renamed[value.name] = value.name + "__f"
            nodes.append(helper.make_node("Cast", [value.name], [value.name + "__f"], name=value.name + "__in", to=FLOAT))
    for node in model.graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, name in enumerate(node.input):
            new.input[i] = renamed.get(name, name)
        if node.op_type in ("Constant", "ConstantOfShape"):
            for attr in new.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT16:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
            nodes.append(new)
            continue
        if node.op_type == "Cast":
            to = next(a for a in new.attribute if a.name == "to")
            if to.i == FLOAT16:
                new.output[0] = node.output[0] + "__c"
                nodes.append(new)
                rounded(node.output[0], node.output[0] + "__c")
                continue
            nodes.append(new)
            continue
        half_outputs = [i for i, o in enumerate(node.output) if o and types.get(o) == FLOAT16]
        for i in half_outputs:
            new.output[i] = node.output[i] + "__c"
        nodes.append(new)
        for i in half_outputs:
            rounded(node.output[i], node.output[i] + "__c")

    result = onnx.ModelProto()
    result.CopyFrom(model)
    g = result.graph
    del g.node[:]
    g.node.extend(nodes)
    dtypes = {}
    new_inits = []
    for tensor in model.graph.initializer:
        data_type = FLOAT if tensor.data_type == FLOAT16 else tensor.data_type
        dtypes[tensor.name] = helper.tensor_dtype_to_np_dtype(data_type)
        new_inits.append(placeholder(tensor.name, data_type, tensor.dims))
    del g.initializer[:]
    g.initializer.extend(new_inits)
    del g.value_info[:]
    for value in g.output:
        if value.type.tensor_type.elem_type == FLOAT16:
            value.type.tensor_type.elem_type = FLOAT
    return result, dtypes


# ---- measurement: how close do fp32 activations come to the float16 range? -------------------------------------
def activation_survey(model_path: Path, feeds: Mapping[str, np.ndarray], chunk: int = 128,
                      threads: int = 0) -> list[dict]:
    """Max |x| of every data-dependent float intermediate of an fp32 ONNX graph, largest first.

    Runs the graph in ONNX Runtime (CPU) with ``chunk`` intermediates exposed as extra outputs at a
    time (memory stays bounded; the graph is run ``ceil(n / chunk)`` times). For ``ReduceL2`` /
    ``ReduceSumSquare`` nodes the reported value is the sum of squares the op accumulates, which is
    what overflows first when such a reduction runs in float16. Entries: ``node``, ``op``,
    ``tensor``, ``max_abs``, ``fp16_headroom`` (= 65504 / max_abs; < 1 overflows).
    """
    import onnxruntime as ort

    model = onnx.load(str(model_path), load_external_data=False)
    types = elem_types(model)
    live = _data_dependent(model)
    outputs = {v.name for v in model.graph.output}
    targets = [(node, o) for node in model.graph.node for o in node.output
               if o in live and types.get(o) == FLOAT and o not in outputs and node.op_type != "Constant"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    results = []
    base = Path(model_path).parent
    for start in range(0, len(targets), chunk):
        part = targets[start:start + chunk]
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend(helper.make_tensor_value_info(o, FLOAT, None) for _, o in part)
        path = base / f".survey-{start}.onnx"
        path.write_bytes(probe.SerializeToString())
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            values = session.run([o for _, o in part], dict(feeds))
        finally:
            path.unlink(missing_ok=True)
        for (node, name), value in zip(part, values):
            peak = float(np.abs(value).max()) if value.size else 0.0
            if node.op_type == "ReduceL2":
                peak = peak * peak
            results.append({"node": node.name, "op": node.op_type, "tensor": name, "max_abs": peak,
                            "fp16_headroom": FP16_MAX / peak if peak else float("inf")})
        del values
    return sorted(results, key=lambda r: -r["max_abs"])
