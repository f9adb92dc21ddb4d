"""The doctor's one-line verdicts on a weights folder and on an engines folder.

Weights: the ``weights check`` of :func:`personalive_trt.models.weights.check_weights_dir` (every file read against
the layout, nothing built), summed up as ``released``, ``synthetic`` (random weights: a ``synthetic`` spec, or a
folder written by the reference data's ``synth_weights.py``, which leaves its ``weights_manifest.json``),
``missing`` or ``broken``.

Engines: the folder's ``build.json`` and, for TensorRT, the engine cache keys (:mod:`personalive_trt.engines.cache`)
against this machine: the GPU and compute capability each engine was built for, the TensorRT version, the
precision and the stream shapes, the weights it was built from, whether `build` stored known answers for the
self-check, and the command that rebuilds it when it does not fit here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Verdict:
    """One line of the report. ``status``: ``ok``, ``info`` (works, with a caveat), ``skipped`` or ``failed``."""

    subject: str
    status: str
    text: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.subject}: {self.text}" + (f"; {self.fix}" if self.fix else "")

    def as_dict(self) -> dict:
        return {"subject": self.subject, "status": self.status, "text": self.text, "fix": self.fix,
                "line": self.line()}


SYNTHETIC_MANIFEST = "weights_manifest.json"  # written by ../shared/reference/synth_weights.py


def weights_verdict(spec: str, asked: bool = True) -> Verdict:
    """``spec``: a folder or ``synthetic[:size]`` (``auto`` resolved by the caller). ``asked``: the user named
    it (a missing folder is then a failure; the default folder missing only means synthetic weights)."""
    from personalive_trt.models.weights import WeightsError, check_weights_dir, parse_weights_spec

    try:
        kind, value = parse_weights_spec(spec)
    except WeightsError as exc:
        return Verdict(f"weights {spec}", "failed", str(exc))
    if kind == "synthetic":
        return Verdict(f"weights {spec}", "info", f"synthetic ({value}): random weights, not a real animation",
                       "get the released ones with `personalive-trt weights download ./pretrained_weights`")
    root = Path(value)
    if not root.is_dir():
        return Verdict(f"weights {root}", "failed" if asked else "info", "missing (no such folder)",
                       f"`personalive-trt weights download {root}`")
    try:
        reports = check_weights_dir(root)
    except WeightsError as exc:
        return Verdict(f"weights {root}", "failed", f"broken: {exc}", f"`personalive-trt weights check {root}`")
    bad = [r for r in reports if not r.ok]
    if bad:
        problems = sum(len(r.problems) for r in bad)
        first = bad[0].problems[0]
        return Verdict(f"weights {root}", "failed",
                       f"broken: {problems} problem(s) in {', '.join(r.name for r in bad)} (first: {first})",
                       f"see `personalive-trt weights check {root}`")
    absent = [r.name for r in reports if r.absent]
    extra = f"; {', '.join(absent)} absent (optional: --vae tiny needs taesd)" if absent else ""
    synthesized = _synthesized(root)
    if synthesized:
        return Verdict(f"weights {root}", "info", f"synthetic ({synthesized}): every file passes the weights "
                       f"check, but the weights are random{extra}")
    return Verdict(f"weights {root}", "ok", f"released: every file passes the weights check{extra}")


def _synthesized(root: Path) -> str | None:
    path = root / SYNTHETIC_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(manifest, dict) and {"config", "seed"} <= set(manifest):
        return f"written by synth_weights.py, config {manifest['config']}, seed {manifest['seed']}"
    return None


# ---- engines ----------------------------------------------------------------------------------------------
def rebuild_command(record, engines_dir: Path) -> str:
    """The `build` command that rebuilds ``engines_dir`` as it was built (on this machine)."""
    windows = " ".join(f"--window {w}" for w in sorted({c["window"] for c in record.configs}))
    overrides = " ".join(f"--override {name}={p}" for name, p in sorted(record.overrides.items()))
    return " ".join(part for part in (
        f"personalive-trt build --weights {record.weights} --engines {engines_dir} --backend {record.backend}",
        windows, f"--vae {record.vae} --precision {record.base_precision}", overrides, "--force") if part)


@dataclass(frozen=True)
class EnginesFacts:
    """What the verdict read: for the report's details and for the TensorRT path."""

    record: object | None  # BuildRecord
    engines: dict  # network -> {"gpu", "capability", "tensorrt", "precision", "profile"}
    known_answers: dict | None


def engines_verdict(engines_dir: str | Path, weights: str | None = None) -> tuple[Verdict, EnginesFacts]:
    """The engines folder against this machine (see the module docstring). ``weights``: the weights `run` would
    use, checked against the ones the folder was built from (None: not checked)."""
    from personalive_trt.engines.folder import BuildError, read_build, weights_fingerprint
    from personalive_trt.engines.cache import EngineCache, EngineError
    from personalive_trt.engines.known_answers import NO_ANSWERS_LINE, read_record

    folder = Path(engines_dir)
    subject = f"engines {folder}"
    empty = EnginesFacts(None, {}, None)
    if not folder.is_dir():
        return Verdict(subject, "failed", "missing (no such folder)",
                       f"`personalive-trt build --engines {folder}`"), empty
    try:
        record = read_build(folder)
        answers = read_record(folder)
    except (BuildError, EngineError) as exc:
        return Verdict(subject, "failed", str(exc)), empty
    fix = f"`{rebuild_command(record, folder)}`"
    windows = sorted({c["window"] for c in record.configs})
    resolutions = sorted({c.get("resolution", 512) for c in record.configs})
    shapes = f"window {', '.join(map(str, windows))}, {', '.join(f'{r}²' for r in resolutions)}, --vae {record.vae}"
    notes = [] if answers else [NO_ANSWERS_LINE.format(folder=folder).split(": ", 1)[1]]
    if weights is not None:
        try:
            if weights_fingerprint(weights, vae=record.vae) != record.fingerprint:
                return (Verdict(subject, "failed", f"built from weights {record.weights!r}, not {weights!r}",
                                f"`personalive-trt build --weights {weights} --engines {folder} --force`"),
                        EnginesFacts(record, {}, answers))
        except (OSError, ValueError) as exc:
            return Verdict(subject, "failed", f"cannot fingerprint the weights {weights!r}: {exc}"), empty
    if record.backend != "tensorrt":
        text = f"{record.backend} build ({', '.join(record.precisions)}; {shapes})"
        return (Verdict(subject, "ok" if not notes else "info", "; ".join([text, *notes])),
                EnginesFacts(record, {}, answers))
    try:
        manifest = EngineCache(folder / "tensorrt").manifest()
    except EngineError as exc:
        return Verdict(subject, "failed", str(exc), fix), EnginesFacts(record, {}, answers)
    engines = {name: {"gpu": e["key"]["gpu"]["name"], "capability": e["key"]["gpu"]["compute_capability"],
                      "tensorrt": e["key"]["tensorrt_version"], "precision": e["key"]["precision"],
                      "profile": e["key"]["profile"]} for name, e in manifest.items()}
    facts = EnginesFacts(record, engines, answers)
    if not engines:
        return Verdict(subject, "failed", "build.json says tensorrt, but no engine is in its manifest", fix), facts
    built_for = sorted({(e["gpu"], e["capability"], e["tensorrt"]) for e in engines.values()})
    precisions = sorted({e["precision"] for e in engines.values()})
    described = "; ".join(f"{gpu} (sm {cc}), TensorRT {trt}" for gpu, cc, trt in built_for)
    text = f"TensorRT engines built for {described}, {'/'.join(precisions)}, {shapes}"
    mismatch = _machine_mismatch(built_for)
    if mismatch:
        return Verdict(subject, "failed", f"{text}; {mismatch}", fix), facts
    return Verdict(subject, "ok" if not notes else "info", "; ".join([text + ": built for this GPU", *notes])), facts


def _machine_mismatch(built_for: list[tuple[str, str, str]]) -> str:
    """Why engines built for ``built_for`` (gpu, capability, TensorRT) cannot run here ('' when they can)."""
    from personalive_trt.engines.backends import TensorRTNotAvailableError, require_tensorrt
    from personalive_trt.engines.cache import EngineError, GpuInfo

    try:
        trt = require_tensorrt()
    except TensorRTNotAvailableError as exc:
        return f"this machine cannot load them: {exc}"
    try:
        here = GpuInfo.target(trt)
    except EngineError as exc:
        return f"this machine cannot run them: {exc}"
    capability = f"{here.capability[0]}.{here.capability[1]}"
    problems = []
    if any(gpu != here.name or cc != capability for gpu, cc, _ in built_for):
        problems.append(f"this machine has {here.name} (sm {capability})")
    if any(version != trt.__version__ for _, _, version in built_for):
        problems.append(f"TensorRT {trt.__version__} here")
    return "; ".join(problems)


__all__ = ["EnginesFacts", "Verdict", "engines_verdict", "rebuild_command", "weights_verdict"]
