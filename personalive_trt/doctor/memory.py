"""Estimated peak device memory of `run` and `serve --max-sessions N` (torch backend), against what the GPU has free.

Nothing measured this on a GPU yet (no GPU figures exist; benchmarks/RESULTS.md), so the estimate is derived, not
fitted, and says which of its terms are exact:

    session = weights + state + outputs + WORKSPACE_FACTOR * widest * (2 with CUDA graphs, else 1)
    run     = CUDA_CONTEXT + session
    serve N = CUDA_CONTEXT + N * session       (every session slot loads its own networks today: web/pool.py
                                                calls the animator factory once per slot)

* ``weights`` (exact): every parameter and buffer of the components `run` loads, in the run's dtype, counted on
  the meta device from the weights' configs (:func:`personalive_trt.build.memory.meta_models`; the released sizes
  when no weights folder is given). ``--vae tiny`` loads TAESD besides the full VAE (its encoder encodes the
  reference).
* ``state`` (exact): the streaming runtime's device buffers (piles, key/value banks for the reference + the bank
  capacity ``keyframe_banks``, frames), allocated by the runtime's own allocation code on the meta device, so this
  cannot drift from it.
* ``outputs`` (exact): every network backend's output buffers at its profile maximum (``EngineBackend.allocate``).
* ``widest`` (derived): the largest activation of a per-step network, :func:`personalive_trt.build.memory.activation_bytes`
  in the run's dtype (the network's inputs and outputs at their largest shapes, or for the VAE decoder its widest
  full-resolution feature map). ``WORKSPACE_FACTOR`` such tensors are assumed alive at once (a layer's input,
  output and one temporary; inference frees the rest); with CUDA graphs the eager warm-up's blocks stay cached
  beside the graphs' private pool, so the workspace counts twice. Both are assumptions to fit on the first GPU
  (the GPU check's matrix records ``cuda_max_memory_allocated``).
* ``CUDA_CONTEXT``: the CUDA context, kernels and cuBLAS/cuDNN handles, outside torch's allocator (an assumed
  0.5 GiB; 0.3 to 1 GiB is typical across GPUs and drivers).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

GIB = 2**30
WORKSPACE_FACTOR = 3
CUDA_CONTEXT = int(0.5 * GIB)
#: The per-step networks (a call runs them; the others run once per reference or keyframe, before the call).
STEP_ROLES = ("pose_encoder", "motion_encoder", "pose_guider", "denoising_unet", "vae_decoder", "reference_unet",
              "bank_projector")


@dataclass(frozen=True)
class RunMemory:
    """One configuration's estimate (bytes); see the module docstring for each term."""

    vae: str
    resolution: int
    window: int
    dtype: str
    graphs: bool
    weights: int
    state: int
    outputs: int
    widest: int
    widest_network: str

    @property
    def workspace(self) -> int:
        return WORKSPACE_FACTOR * self.widest * (2 if self.graphs else 1)

    @property
    def session(self) -> int:
        return self.weights + self.state + self.outputs + self.workspace

    @property
    def run(self) -> int:
        return CUDA_CONTEXT + self.session

    def serve(self, sessions: int) -> int:
        return CUDA_CONTEXT + sessions * self.session

    def max_sessions(self, free: int) -> int:
        """How many `serve` sessions fit in ``free`` bytes (0: not even one)."""
        return max((free - CUDA_CONTEXT) // self.session, 0)

    def as_dict(self) -> dict:
        return asdict(self) | {"workspace": self.workspace, "session": self.session, "run": self.run}


def runtime_state_bytes(networks, config) -> int:
    """The streaming runtime's device buffers for ``networks`` (built on the meta device): the runtime's own
    allocation code runs on a bare instance, so the sizes are exactly what a runtime allocates, with no memory
    used. The pinned host rings are on the CPU, so on the meta device they are not counted (on a CPU device they
    are). (The runtime has no public sizing hook; this is the one place that reaches into it.)"""
    import inspect

    from personalive_trt.runtime.stream import StreamRuntime

    sizing = StreamRuntime.__new__(StreamRuntime)
    ring = inspect.signature(StreamRuntime).parameters["ring"].default  # sizes the host rings only
    sizing.config, sizing.shapes, sizing.nets, sizing.ring = config, networks.shapes, networks, ring
    sizing.device, sizing.dtype = networks.device, networks.dtype
    sizing._allocate()
    return sum(t.numel() * t.element_size() for t in sizing.state_buffers().values())


def estimate_run(weights: str = "synthetic:full", resolution: int = 512, window: int = 4,
                 dtype: torch.dtype = torch.float16, graphs: bool = True, decoders=("full", "tiny")) -> list[RunMemory]:
    """The estimate for each decoder (``--vae``) of `run` with ``weights`` (a folder or ``synthetic[:size]``)."""
    from personalive_trt.build import memory as buildmem
    from personalive_trt.config import StreamConfig
    from personalive_trt.devices import DTYPE_NAMES
    from personalive_trt.engines.networks import Networks
    from personalive_trt.models.weights import Models

    meta = buildmem.meta_models(weights, vae="tiny" if "tiny" in decoders else "full")
    models = Models(**vars(meta), source=f"{weights} (meta)", synthetic=True).to(dtype=dtype)
    vae = models.vae
    estimates = []
    for decoder in decoders:
        config = StreamConfig(resolution=resolution, window=window, vae=decoder)
        networks = Networks.from_models(models, config)
        loaded = [m for name, m in models.modules().items() if name != "taesd" or decoder == "tiny"]
        weight_bytes = sum(t.numel() * t.element_size() for m in loaded for t in m.state_dict().values())
        outputs = sum(t.numel() * t.element_size() for b in networks.backends.values() for t in b.buffers.values())
        scale = torch.finfo(dtype).bits / 32  # activation_bytes counts fp32
        widest = {role: int(buildmem.activation_bytes(networks.backends[role].spec, vae) * scale)
                  for role in STEP_ROLES}
        network = max(widest, key=widest.get)
        estimates.append(RunMemory(vae=decoder, resolution=resolution, window=window,
                                   dtype=DTYPE_NAMES[dtype], graphs=graphs, weights=weight_bytes,
                                   state=runtime_state_bytes(networks, config), outputs=outputs,
                                   widest=widest[network], widest_network=networks.backends[network].spec.name))
    return estimates


def memory_lines(estimates: list[RunMemory], free: int | None, sessions: int = 1) -> list[tuple[str, str]]:
    """(status, line) per decoder: `run`'s estimate, ``serve --max-sessions N``'s, and how many sessions fit."""
    lines = []
    for e in estimates:
        text = (f"--vae {e.vae}: run ~{e.run / GIB:.1f} GiB at {e.resolution}² window {e.window} {e.dtype} "
                f"(weights {e.weights / GIB:.1f}, state {(e.state + e.outputs) / GIB:.2f}, workspace "
                f"{e.workspace / GIB:.1f} [{e.widest_network}], context {CUDA_CONTEXT / GIB:.1f}); serve "
                f"--max-sessions {sessions} ~{e.serve(sessions) / GIB:.1f} GiB")
        if free is None:
            lines.append(("info", text + "; no GPU here to compare with"))
            continue
        fits = e.max_sessions(free)
        verdict = f"{free / GIB:.1f} GiB free: {'fits' if e.run <= free else 'does NOT fit'}, up to {fits} session(s)"
        lines.append(("ok" if e.serve(sessions) <= free else "failed", f"{text}; {verdict}"))
    return lines


__all__ = ["CUDA_CONTEXT", "RunMemory", "WORKSPACE_FACTOR", "estimate_run", "memory_lines", "runtime_state_bytes"]
