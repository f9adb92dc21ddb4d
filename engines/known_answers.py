"""Known answers: small inputs and the torch outputs for them, stored per network in an engines folder.

An engine built elsewhere (another GPU, another TensorRT, a driver that miscompiles a kernel) can compute
something else without raising. So `build` keeps, for every network of every configuration it exports, one set of
inputs at the network's smallest shapes (:func:`~personalive_trt.export.specs.sample_inputs`: realistic values,
never zeros) and the outputs of the torch fp32 module for them (:func:`record_build_answers`, one extra forward per
network while the export has the modules loaded); the start-up self-check and ``personalive-trt doctor`` run the
loaded backend on those inputs and compare with the network's export tolerance (the one its ONNX export had to
meet against the same torch module). One call per network at its smallest shapes: less than one streaming step.

Layout and record (the record is kept beside the answers, not in ``build.json``, whose format is pinned by
tests/test_stored_records.py: a folder built before keeps loading as it did)::

    engines_dir/self_check/<network>.<input shapes digest>.safetensors     "input.<name>", "output.<name>"
    engines_dir/self_check/answers.json     {"format": 1, "seed": 0, "files": {file name: {"network", "sha256",
                                                                                           "inputs"}}}

``inputs`` (name -> shape) lets a folder built for several windows keep one file per shape set of a network
(the VAE decoder's smallest input follows the window). A folder whose exports `build` reuses keeps its answers
(they are recorded, and :func:`forget_answers` drops them, only when the networks are exported again). A folder
built before `build` stored them has no record: :func:`check_known_answers` returns None and the caller prints
:data:`NO_ANSWERS_LINE`.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from personalive_trt.engines.cache import EngineError, atomic_write
from personalive_trt.engines.checks import Comparison, one_line, psnr, relative_error

FOLDER = "self_check"
RECORD_FILE = "answers.json"  # in FOLDER
FORMAT = 1
# A folder built before `build` stored known answers. Its exports are current, so a plain `build` reuses them and
# records nothing: only --force exports (and records) again.
NO_ANSWERS_LINE = ("{folder}: its engines have no known answers (built before build stored them), so they start "
                   "unchecked; rebuild to enable the self-check (personalive-trt build --force)")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shapes(spec) -> dict[str, list[int]]:
    return {t.name: list(t.min_shape) for t in spec.inputs}


def record_known_answers(networks, engines_dir: str | Path, seed: int = 0) -> dict:
    """Write the known answers of every network of ``networks`` (torch fp32 backends: the reference) into
    ``engines_dir/self_check`` and return their record (see the module docstring; :func:`write_record` keeps it).

    Call once per stream configuration of a build and merge the records with :func:`merge_records`."""
    from safetensors.torch import save

    from personalive_trt.engines.backends import TorchBackend
    from personalive_trt.export.specs import sample_inputs

    if networks.dtype != torch.float32 or not all(isinstance(b, TorchBackend) for b in networks.backends.values()):
        raise ValueError("known answers come from the torch fp32 modules; got "
                         f"{networks.description or type(networks).__name__} in {networks.dtype}")
    folder = Path(engines_dir) / FOLDER
    files = {}
    for backend in networks.backends.values():
        spec = backend.spec
        shapes = _shapes(spec)
        name = f"{spec.name}.{_digest(json.dumps(shapes, sort_keys=True).encode())[:8]}.safetensors"
        inputs = dict(zip(spec.input_names, sample_inputs(spec, "min", "fp32", seed)))
        with torch.no_grad():
            outputs = backend.infer({k: v.to(backend.device) for k, v in inputs.items()})
        tensors = {f"input.{k}": v.contiguous() for k, v in inputs.items()}
        tensors |= {f"output.{k}": v.detach().float().cpu().contiguous() for k, v in outputs.items()}
        data = save(tensors, metadata={"network": spec.name, "seed": str(seed)})
        atomic_write(folder / name, data)
        files[name] = {"network": spec.name, "sha256": _digest(data), "inputs": shapes}
    return {"format": FORMAT, "seed": seed, "files": files}


def record_build_answers(models, configs, engines_dir: str | Path, seed: int = 0) -> dict:
    """What `build` stores: the known answers of every network of every configuration in ``configs``, computed
    with ``models`` (fp32 torch modules, all still loaded), and their record written beside them."""
    from personalive_trt.engines.networks import Networks

    record = merge_records(*(record_known_answers(Networks.from_models(models, config), engines_dir, seed)
                             for config in configs))
    write_record(engines_dir, record)
    return record


def forget_answers(engines_dir: str | Path) -> None:
    """Drop the stored answers (before the networks are exported again: they belong to the old exports)."""
    import shutil

    shutil.rmtree(Path(engines_dir) / FOLDER, ignore_errors=True)


def write_record(engines_dir: str | Path, record: Mapping) -> None:
    atomic_write(Path(engines_dir) / FOLDER / RECORD_FILE, (json.dumps(record, indent=2) + "\n").encode())


def merge_records(*records: Mapping) -> dict:
    """One record from the records of several configurations (their files are keyed by network and shapes)."""
    files = {}
    for record in records:
        files.update(record["files"])
    return {"format": FORMAT, "seed": records[0]["seed"], "files": files}


def precision_of(backend) -> str:
    """``fp16`` when the backend takes or returns any float16 tensor, else ``fp32`` (its export tolerance)."""
    dtypes = [*backend.input_dtypes.values(), *backend.output_dtypes.values()]
    return "fp16" if torch.float16 in dtypes else "fp32"


def _answer_for(spec, record: Mapping, folder: Path) -> Path:
    for name, entry in record["files"].items():
        if entry["network"] == spec.name and all(
                spec.input(k).accepts(tuple(shape)) for k, shape in entry["inputs"].items()):
            return folder / name
    raise EngineError(f"{folder}: no known answer for {spec.name} at shapes this configuration accepts; rebuild "
                      "to enable the self-check")


def load_answer(path: Path, sha256: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(inputs, outputs) of one stored answer; a file that does not match its record is an error."""
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EngineError(f"{path}: known answer unreadable ({exc}); rebuild to enable the self-check") from exc
    if _digest(data) != sha256:
        raise EngineError(f"{path}: known answer does not match its record in {RECORD_FILE} (sha256); rebuild")
    tensors = load(data)
    inputs = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
    outputs = {k.removeprefix("output."): v for k, v in tensors.items() if k.startswith("output.")}
    return inputs, outputs


def check_known_answers(networks, engines_dir: str | Path, record: Mapping | None, what: str = ""):
    """Run every backend of ``networks`` on its known answer: a list of
    :class:`~personalive_trt.runtime.self_check.Comparison` (one per network, with its time), or None when
    the folder has none (``record`` None: print :data:`NO_ANSWERS_LINE`).

    A backend that raises is a failed comparison with its message. Reads device values: a start-up check."""
    if record is None:
        return None
    if record.get("format") != FORMAT:
        raise EngineError(f"{engines_dir}: known answers of format {record.get('format')}, expected {FORMAT}; "
                          "rebuild to enable the self-check")
    folder = Path(engines_dir) / FOLDER
    by_file = record["files"]
    checks = []
    for role, backend in networks.backends.items():
        spec = backend.spec
        path = _answer_for(spec, record, folder)
        inputs, expected = load_answer(path, by_file[path.name]["sha256"])
        precision = precision_of(backend)
        tolerance = spec.tolerance(precision)
        label = f"{what or networks.description} {spec.name} ({precision})"
        start = time.perf_counter()
        try:
            with torch.no_grad():
                outputs = backend.infer({k: v.to(backend.device, backend.input_dtypes[k]) for k, v in inputs.items()})
                outputs = {k: v.float().cpu() for k, v in outputs.items()}  # host read: start-up only
        except Exception as exc:  # noqa: BLE001 -- the backend's failure is the check's result, in one line
            checks.append(Comparison(label, "the torch outputs stored by build", ("backend",), None,
                                     tolerance.limit, one_line(exc), time.perf_counter() - start, tolerance.metric))
            continue
        error = psnr(outputs, expected) if tolerance.metric == "psnr" else relative_error(outputs, expected)
        checks.append(Comparison(label, "the torch outputs stored by build", ("backend",), error, tolerance.limit,
                                 None, time.perf_counter() - start, tolerance.metric))
    return checks


def read_record(engines_dir: str | Path) -> dict | None:
    """The known answers' record of ``engines_dir`` (None when the build stored none: a folder built before)."""
    path = Path(engines_dir) / FOLDER / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EngineError(f"{path}: unreadable known answers ({exc}); rebuild to enable the self-check "
                          "(personalive-trt build --force)") from exc


__all__ = ["FOLDER", "NO_ANSWERS_LINE", "RECORD_FILE", "check_known_answers", "forget_answers", "load_answer",
           "merge_records", "precision_of", "read_record", "record_build_answers", "record_known_answers",
           "write_record"]
