"""The streaming runtime: PersonaLive's online loop on buffers allocated once, replayed as CUDA graphs.

:class:`~personalive_trt.runtime.reference_loop.Animator` is the readable reference: it keeps its piles in Python
lists, concatenates them every call and decides on keyframes on the host. :class:`StreamRuntime` does
the same arithmetic with every piece of state in a device buffer allocated at construction:

* the driving frames arrive through a pinned host ring and one asynchronous copy;
* one call (resize/normalise, pose encoder, keypoint transfer and drawing, face crops with the boxes
  kept on the device, motion encoder, pose guider, pile shifts in place, noise drawn in place, the
  denoising UNet, the DDIM update, the VAE decode and the uint8 conversion) only reads and writes
  those buffers, never reads a device value on the host and never creates a tensor from host data;
* so on CUDA, with the torch or TensorRT backend, each kind of call is captured once as a CUDA graph
  and replayed: the first call of a stream, the steady call for each number of history keyframes in
  effect (with and without the keyframe test), and the keyframe bank write per slot;
* the finished uint8 frames go back through a pinned host ring, with an event the host waits on.

Keyframes. The keyframe test (motion distance of the pile's first frame to the motion bank) runs on
the device inside the call and writes its verdict to a pinned flag together with the frames. The new
keyframe's banks are only read from the next call on (as in the original), so the host reads the flag
when it starts that next call: it waits for the previous call's output event, which it waits on anyway
to hand the frames out, then replays the keyframe-write graph (reference UNet + key/value projection
into the next bank slot) and the step graph for one more bank. The price: while a keyframe is still
possible (from the 10th call until ``max_keyframes`` are taken) a call is enqueued only once the
previous one has finished, so the GPU idles for the host's launch latency (tens of microseconds per
call); outside that window calls are enqueued ahead. The alternative, one graph with masked bank
slots, would attend to all ``1 + max_keyframes`` banks on every call (up to 4x the reference
attention work for the whole session) to save that gap.

Reference keys/values: the denoising UNet takes each bank's key and value projections
(``bank_projector``), computed once per reference or keyframe into slot buffers; a reference swap
rewrites the same buffers, so no graph is captured again.
"""
from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from personalive_trt.models import keypoints as kp
from personalive_trt.config import COND_SIZE, StreamConfig
from personalive_trt.devices import canonical_device
from personalive_trt.models.keypoints import crop_faces_device
from personalive_trt.choices import Backend
from personalive_trt.engines.backends import OnnxRuntimeBackend, TensorRTBackend, TorchBackend
from personalive_trt.engines.folder import read_build
from personalive_trt.engines.networks import Networks
from personalive_trt.runtime.open import open_networks
from personalive_trt.runtime.reference_loop import (NonFiniteError, Reference, check_frames, encode_reference,
                                                    write_banks)
from personalive_trt.models.scheduler import DDIMSchedule

NoiseFn = Callable[[torch.Tensor], object]


class ReadyEvent:
    """Stands in for a CUDA event where there is none (CPU): the work is done when ``submit`` returns."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None


@dataclass
class Output:
    """One call's finished frames, handed back by :meth:`StreamRuntime.collect`.

    ``frames`` is a view of a pinned host ring slot: valid once ``event`` has completed (see
    :meth:`wait`) and until that slot is reused, ``ring`` calls later.
    """

    frames: np.ndarray  # (W, R, R, 3) uint8
    event: object  # torch.cuda.Event or ReadyEvent
    index: int  # which call (0-based) produced it
    keyframes: int  # history keyframes in effect during the call
    _flags: np.ndarray

    def wait(self) -> np.ndarray:
        """Block until the frames are on the host; raises NonFiniteError if the call produced NaN/Inf."""
        self.event.synchronize()
        if self._flags[FLAG_NONFINITE_POSE] > 0:
            raise NonFiniteError(f"call {self.index}: the pose encoder's keypoints contain NaN/Inf (fp16 overflow?); "
                                 "reset() before streaming on")
        if self._flags[FLAG_NONFINITE] > 0:
            raise NonFiniteError(f"call {self.index}: the denoised latents or decoded frames contain NaN/Inf "
                                 "(fp16 overflow?); reset() before streaming on")
        return self.frames


# The call's flags buffer, copied to the host with its frames: [keyframe taken, latents/frames non-finite,
# keypoints non-finite].
FLAG_KEYFRAME, FLAG_NONFINITE, FLAG_NONFINITE_POSE = 0, 1, 2
NUM_FLAGS = 3
# Keypoints are clamped to this many canvas half-widths before they become pixels: far outside any canvas,
# so finite keypoints are never changed in effect, and float->int conversion stays defined.
KEYPOINT_LIMIT = 1e4


class StreamRuntime:
    """PersonaLive's streaming loop on preallocated buffers (CUDA graphs on GPU).

    Drop-in for :class:`~personalive_trt.runtime.reference_loop.Animator` (``fuse_reference``, ``swap_reference``,
    ``step``, ``reset``, the in-place ``noise`` hook, ``config``, ``count``) plus the asynchronous
    ``submit``/``collect`` pair.

    Args:
        networks (`Networks`): the nine networks (torch modules, ONNX Runtime sessions, TensorRT engines).
        config (`StreamConfig`, *optional*): must be the one the networks were built for.
        noise (`callable`, *optional*): fills a given tensor in place with the diffusion noise. With CUDA
            graphs it is captured, so it must be graph-safe (e.g. ``normal_`` with a CUDA generator).
            Defaults to a normal draw from a generator seeded with ``seed``, on the networks' device.
        seed (`int`, defaults to 42): seed of the default noise generator.
        graphs (`bool`, *optional*): capture CUDA graphs. Default: on CUDA with the torch or TensorRT
            backend. ONNX Runtime runs the same calls without graphs.
        ring (`int`, defaults to 2): pinned host slots for inputs and outputs = calls in flight.
        hooks (`WarmUpHooks`, *optional*): what runs around the construction's warm-up calls (the start-up
            self-check, :class:`~personalive_trt.runtime.self_check.WarmUpCheck`); default: nothing.
    """

    def __init__(self, networks: Networks, config: StreamConfig | None = None, noise: NoiseFn | None = None,
                 seed: int = 42, graphs: bool | None = None, ring: int = 2, hooks: WarmUpHooks | None = None) -> None:
        self.config = config or networks.shapes.config
        if networks.shapes.config != self.config:
            raise ValueError(f"StreamRuntime: networks were built for {networks.shapes.config}, not {self.config}")
        if ring < 1:
            raise ValueError(f"StreamRuntime: ring must be >= 1, got {ring}")
        # A view of the caller's networks, never a change to them (another loop may share them): outputs are
        # consumed (copied into the runtime's buffers) before the same network runs again, and every input of
        # the denoising UNet is one of the runtime's state buffers (or a slice from its first element),
        # allocated once -- TensorRT reads those in place instead of staging a copy (see TensorRTBackend).
        self.nets = networks.view(clone_outputs=False, stable_inputs={
            "denoising_unet": networks.backends["denoising_unet"].spec.input_names})
        self.shapes = networks.shapes
        # "cuda" and "cuda:0" are one device: buffers report the index, so the runtime keeps it too.
        self.device, self.dtype = canonical_device(networks.device), networks.dtype
        self.backend = _backend_kind(networks)
        cuda = self.device.type == "cuda"
        if graphs is None:
            graphs = cuda and self.backend is not None and self.backend.capturable
        if graphs and not cuda:
            raise ValueError("StreamRuntime: CUDA graphs need a CUDA device")
        if graphs and self.backend is Backend.ONNXRUNTIME:
            raise ValueError("StreamRuntime: ONNX Runtime sessions cannot be captured in CUDA graphs; use graphs=False")
        self.use_graphs = graphs
        self.ring = ring
        self.seed = seed
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.noise: NoiseFn = noise or (lambda t: t.normal_(generator=self.generator))
        self.schedule = DDIMSchedule(self.config.step_length, device=self.device)
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self._allocate()
        if cuda:
            # The buffers were allocated (and zeroed) on the current stream; the runtime's stream, which
            # is not synchronised with it, must see them finished before its first use.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.reference_fused = False
        self.reset()
        self._warm_up(hooks or WarmUpHooks())

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_models(cls, models, config: StreamConfig | None = None, backend: Backend | str = Backend.TORCH,
                    engines: str | Path | None = None, noise: NoiseFn | None = None, seed: int = 42,
                    graphs: bool | None = None, weights: str | None = None,
                    compile: "bool | CompileOptions" = False) -> "StreamRuntime":  # noqa: A002
        """A runtime over loaded :class:`~personalive_trt.models.weights.Models` (``backend="torch"``) or over the
        engines built from them (``"onnxruntime"``/``"tensorrt"``, from ``engines``; ``weights`` is the
        spec they were built from, checked against the build record).

        ``compile`` (torch backend): True or :class:`~personalive_trt.runtime.compile.CompileOptions` runs
        compiled copies of the per-step networks (``models`` is left as it was), compiled for every shape
        of the stream at construction, before the graphs are captured (see :mod:`.compile`). The networks
        are opened by :func:`~personalive_trt.runtime.open.open_networks`."""
        config = config or StreamConfig()
        backend = Backend.parse(backend, "backend")
        if compile and backend.runs_engines:
            raise ValueError(f"compile: only the torch backend is compiled, not {backend}")
        if backend.runs_engines and weights is None:
            raise ValueError("StreamRuntime.from_models: pass weights= (the spec the engines were built from)")
        networks = open_networks(backend, config=config, models=models, weights=weights, engines=engines,
                                 compile=compile)
        return cls(networks, config, noise=noise, seed=seed, graphs=graphs)

    @classmethod
    def from_engines(cls, engines_dir: str | Path, config: StreamConfig | None = None,
                     backend: Backend | str = Backend.TENSORRT, device: str | torch.device = "cuda",
                     noise: NoiseFn | None = None, seed: int = 42, graphs: bool | None = None) -> "StreamRuntime":
        """A runtime from a ``personalive-trt build`` folder alone: no torch weights are loaded."""
        if backend not in (Backend.ONNXRUNTIME, Backend.TENSORRT):
            raise ValueError(f"from_engines: backend {backend!r}: expected onnxruntime or tensorrt")
        config = config or StreamConfig()
        weights = read_build(Path(engines_dir)).weights
        networks = open_networks(backend, config=config, device=torch.device(device), weights=weights,
                                 engines=engines_dir)
        return cls(networks, config, noise=noise, seed=seed, graphs=graphs)

    @property
    def description(self) -> str:
        return f"stream runtime ({'CUDA graphs' if self.use_graphs else 'eager'}), {self.nets.description}"

    def compile_report(self) -> dict | None:
        """torch.compile's start-up (cache cold or warm, seconds per network), or None when not compiled."""
        state = self.nets.compiled
        return None if state is None else state.report()

    def _allocate(self) -> None:
        """Every buffer the loop touches, once. Shapes come from ``self.shapes`` only."""
        s, cfg, dev, dt = self.shapes, self.config, self.device, self.dtype
        W, P, R = cfg.window, cfg.pile, cfg.resolution
        cap = self._bank_length_capacity()
        zeros = lambda *shape, dtype=dt: torch.zeros(shape, dtype=dtype, device=dev)  # noqa: E731
        pin = dev.type == "cuda"
        host = lambda *shape, dtype: torch.zeros(shape, dtype=dtype, pin_memory=pin)  # noqa: E731

        self.frames_in = zeros(W, R, R, 3, dtype=torch.uint8)
        self.ref_image = zeros(1, 3, R, R)
        self.ref_latent = zeros(*s.latent_frames(1))
        self.clip_embeds = zeros(*s.clip_embeds())
        pose_outputs = self.nets.backends["pose_encoder"].spec.outputs
        self.ref_detector = {t.name: zeros(1, *t.opt_shape[1:]) for t in pose_outputs}
        self.frame0_t = zeros(1, 3)
        self.latent_pile = zeros(*s.latent_pile())
        self.motion_pile = zeros(*s.motion_states(P))
        self.pose_pile = zeros(*s.pose_features(P))
        self.motion_bank = zeros(1, max(cap, cfg.motion_bank_capacity), *s.motion_states(1)[2:])
        unet_dtypes = self.nets.backends["denoising_unet"].input_dtypes
        self.kv = [tuple(zeros(*s.bank(i, cap), dtype=unet_dtypes[name]) for name in names)
                   for i, names in enumerate(self.nets.kv_names)]
        self.keyframe_latent = zeros(*s.latent_frames(1))
        self.noise_buffer = zeros(*s.latent_chunk(W))
        self.warm_noise = zeros(*s.latent_chunk(cfg.warmup_frames))
        self.video = zeros(W, R, R, 3)
        self.frames_out = zeros(W, R, R, 3, dtype=torch.uint8)
        self.flags = zeros(NUM_FLAGS, dtype=torch.float32)
        self.timesteps = torch.tensor(cfg.pile_timesteps, dtype=torch.int64, device=dev)
        self.warm_alphas = torch.linspace(0, 1, cfg.warmup_frames + 1, device=dev, dtype=dt).view(1, -1, 1, 1)
        self.threshold = float(cfg.keyframe_threshold)
        kp.prepare_device_tables(dev, R, cfg.warmup_frames + 1)

        self.host_in = host(self.ring, W, R, R, 3, dtype=torch.uint8)
        self.host_out = host(self.ring, W, R, R, 3, dtype=torch.uint8)
        self.host_flags = host(self.ring, NUM_FLAGS, dtype=torch.float32)
        self._host_in_np = self.host_in.numpy()
        self._host_out_np = self.host_out.numpy()
        self._host_flags_np = self.host_flags.numpy()
        if dev.type == "cuda":
            self._in_free = [torch.cuda.Event() for _ in range(self.ring)]
            self._done = [torch.cuda.Event() for _ in range(self.ring)]
        else:
            self._in_free = [ReadyEvent() for _ in range(self.ring)]
            self._done = [ReadyEvent() for _ in range(self.ring)]

    def _bank_length_capacity(self) -> int:
        """Banks the key/value slot buffers hold (reference + history keyframes): what the networks hold."""
        return self.shapes.max_bank_length

    def state_buffers(self) -> dict[str, torch.Tensor]:
        """Every device buffer of the loop, by name (their addresses never change)."""
        named = {name: value for name, value in vars(self).items() if isinstance(value, torch.Tensor)
                 and value.device == self.device}
        named.update({f"ref_detector.{k}": v for k, v in self.ref_detector.items()})
        named.update({f"kv.{i}.{j}": t for i, pair in enumerate(self.kv) for j, t in enumerate(pair)})
        return named

    # ---- session state ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the stream (and the reference); ``fuse_reference`` must be called again."""
        self.reference_fused = False
        self.count = 0
        self.keyframes = 0  # history keyframes whose banks are in the K/V slots
        self._pending: deque[tuple[int, int, int]] = deque()  # (slot, call index, keyframes) not collected
        self._flag_slot: int | None = None  # slot whose keyframe flag the next call must read

    @torch.no_grad()
    def fuse_reference(self, image: np.ndarray) -> None:
        """Encode a reference portrait ((R,R,3) uint8 RGB) into the reference buffers and prime the pile."""
        self._fuse(lambda: self._write_reference(encode_reference(self.nets, self.config, image)))

    def _fuse(self, write: Callable[[], None]) -> None:
        """Fill the reference buffers (``write``, on the runtime's stream) and prime the pile."""
        if self.reference_fused:
            raise RuntimeError("fuse_reference: a reference is already fused; call reset() or swap_reference()")
        self._drain()
        with self._on_stream():
            write()
            cfg = self.config
            warm = self.ref_latent.unsqueeze(2).expand(-1, -1, cfg.warmup_frames, -1, -1)
            self.noise(self.warm_noise)
            noisy = self.schedule.add_noise(warm, self.warm_noise, self.timesteps[: cfg.warmup_frames])
            self.latent_pile[:, :, : cfg.warmup_frames].copy_(noisy)
        self.reference_fused = True

    def _write_reference(self, reference: Reference) -> None:
        self.clip_embeds.copy_(reference.clip_embeds)
        self.ref_latent.copy_(reference.latent)
        self.ref_image.copy_(reference.image.unsqueeze(0))
        for name, value in reference.detector.items():
            self.ref_detector[name].copy_(value)
        self._write_kv_slot(0, reference.kv)

    def _fuse_seeded(self, seed: int) -> None:
        """Seeded values fused as the reference (the self-check's, when it only compares graph replays: see
        :meth:`_stage_check_inputs`)."""
        generator = torch.Generator(self.device).manual_seed(seed)
        self._fuse(lambda: self._write_seeded_reference(generator))

    def _write_seeded_reference(self, generator: torch.Generator) -> None:
        """Seeded normal values in every reference buffer a portrait's encoding writes."""
        for buffer in (self.clip_embeds, self.ref_latent, self.ref_image, *self.ref_detector.values()):
            buffer.normal_(generator=generator)
        for pair, bank in zip(self.kv, self.shapes.banks):
            for buffer in pair:
                buffer[:, : bank.tokens].normal_(generator=generator)

    def swap_reference(self, image: np.ndarray) -> None:
        """Switch to another portrait mid-session: the same buffers are rewritten, no graph is re-captured."""
        self.reset()
        self.fuse_reference(image)

    # ---- the asynchronous interface --------------------------------------------------------------
    def submit(self, frames: np.ndarray) -> int:
        """Enqueue one call on ``window`` driving frames ((W,R,R,3) uint8 RGB); returns its index.

        Returns as soon as the work is enqueued (on CUDA). At most ``ring`` calls may be in flight:
        :meth:`collect` the oldest first.
        """
        cfg = self.config
        check_frames(frames, cfg.window, cfg.resolution)
        return self._submit(lambda slot: np.copyto(self._host_in_np[slot], frames), [(self.frames_in, self.host_in)])

    def _submit(self, stage: Callable[[int], object], uploads: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Enqueue one call whose inputs ``stage(slot)`` writes into the pinned ring slot ``slot`` of each
        ``(device buffer, host ring)`` of ``uploads``."""
        if not self.reference_fused:
            raise RuntimeError("submit: no reference fused; call fuse_reference(image) first")
        if len(self._pending) >= self.ring:
            raise RuntimeError(f"submit: {self.ring} calls already in flight; collect() one first")
        slot = self.count % self.ring
        # The slot's previous input copy has long finished in practice; this wait only guards the ring.
        self._in_free[slot].synchronize()
        stage(slot)
        add_keyframe = self._keyframe_from_previous_call()
        index = self.count
        with torch.no_grad(), self._on_stream():
            for device_buffer, host_ring in uploads:
                device_buffer.copy_(host_ring[slot], non_blocking=True)
            self._record(self._in_free[slot])
            if add_keyframe:
                self._run(("keyframe", self.keyframes + 1))
                self.keyframes += 1
            key = self._call_key(index)
            self._run(key)
            self.host_out[slot].copy_(self.frames_out, non_blocking=True)
            self.host_flags[slot].copy_(self.flags, non_blocking=True)
            self._record(self._done[slot])
        self._flag_slot = slot if key[0] == "steady" and key[2] else None
        self._pending.append((slot, index, self.keyframes))
        self.count += 1
        return index

    def collect(self) -> Output:
        """The oldest submitted call's output (its frames are ready once ``output.event`` has completed)."""
        if not self._pending:
            raise RuntimeError("collect: nothing submitted")
        slot, index, keyframes = self._pending.popleft()
        return Output(frames=self._host_out_np[slot], event=self._done[slot], index=index, keyframes=keyframes,
                      _flags=self._host_flags_np[slot])

    def step(self, frames: np.ndarray) -> np.ndarray:
        """Synchronous call: ``window`` driving frames in, ``window`` output frames (a copy) out."""
        if self._pending:
            raise RuntimeError("step: collect() the submitted calls first")
        self.submit(frames)
        return self.collect().wait().copy()

    @torch.no_grad()
    def step_float(self, frames: np.ndarray) -> torch.Tensor:
        """As ``step`` but returns the decoded frames before quantisation: (W,R,R,3) in [0,1], a copy."""
        self.step(frames)
        # The copy is ordered on the runtime's stream (after this call, before any later one rewrites
        # ``video``), then handed to the caller's stream.
        with self._on_stream():
            video = self.video.clone()
        if self.stream is not None:
            caller = torch.cuda.current_stream(self.device)
            caller.wait_stream(self.stream)
            video.record_stream(caller)
        return video

    # ---- host-side scheduling ----------------------------------------------------------------------
    def _keyframe_from_previous_call(self) -> bool:
        """Did the previous call take a history keyframe? Read from its pinned flag.

        This is the loop's only data-dependent host decision. It waits for the previous call's output
        event (which whoever collects that output waits on anyway); calls that cannot add a keyframe
        set no flag slot and do not wait.
        """
        slot, self._flag_slot = self._flag_slot, None
        if slot is None:
            return False
        self._done[slot].synchronize()  # unavoidable: the next graph depends on this flag
        return bool(self._host_flags_np[slot][FLAG_KEYFRAME] > 0)

    def _call_key(self, index: int) -> tuple:
        cfg = self.config
        if index == 0:
            return ("first",)
        check = index > cfg.keyframe_start and self.keyframes < cfg.online_keyframes
        return ("steady", self.keyframes, check)

    def all_keys(self) -> list[tuple]:
        """Every kind of call a stream can make (one CUDA graph each)."""
        cfg = self.config
        keys = [("first",), ("steady", 0, False)]
        keys += [("steady", k, True) for k in range(cfg.online_keyframes)]
        if cfg.online_keyframes:
            keys.append(("steady", cfg.online_keyframes, False))
        keys += [("keyframe", slot) for slot in range(1, cfg.online_keyframes + 1)]
        return keys

    def graph_keys(self) -> list[tuple]:
        """The kinds of call captured as CUDA graphs and, with compiled networks, compiled at construction (the
        others run eager): every kind, here."""
        return self.all_keys()

    def _run(self, key: tuple) -> None:
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
        else:
            self._body(key)

    def _body(self, key: tuple) -> None:
        if key[0] == "first":
            self._advance(first=True)
            self._denoise_and_decode(keyframes=0, test=None, keep_latent=False)
        elif key[0] == "steady":
            self._advance(first=False)
            keyframes, check = key[1], key[2]
            self._denoise_and_decode(keyframes, test=(lambda: self._keyframe_test(keyframes)) if check else None,
                                     keep_latent=check)
        else:
            self._write_keyframe(key[1])

    def _record(self, event) -> None:
        if self.stream is not None:
            event.record(self.stream)

    def _on_stream(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _drain(self) -> None:
        """Wait for every call in flight (reference fusion rewrites buffers they read)."""
        for event in self._done:
            event.synchronize()

    # ---- one call, on device buffers only -----------------------------------------------------------
    def _advance(self, first: bool) -> None:
        """Keypoints, pose features and motion states of the new frames; shifts them into the piles."""
        cfg, nets, dt = self.config, self.nets, self.dtype
        W, warmup = cfg.window, cfg.warmup_frames
        kp_draw, faces = self._driving_conditions(first)
        motion = nets.motion_encoder(faces.transpose(0, 1).unsqueeze(0))
        pose = nets.pose_guider(kp.draw_keypoints(kp_draw, size=cfg.resolution).to(dt).transpose(0, 1).unsqueeze(0))
        if first:
            ref_motion, driving = motion[:, :1], motion[:, 1:]
            warm = (1 - self.warm_alphas) * ref_motion + self.warm_alphas * driving[:, :1]
            self.motion_pile[:, :warmup].copy_(warm[:, :-1])
            self.motion_pile[:, warmup:].copy_(driving)
            self.motion_bank[:, :1].copy_(ref_motion)
            self.pose_pile.copy_(pose)
        else:
            # The sources overlap their destinations: shift through a (graph-pool) temporary.
            self.motion_pile.copy_(torch.cat([self.motion_pile[:, W:], motion], dim=1))
            self.pose_pile.copy_(torch.cat([self.pose_pile[:, :, W:], pose], dim=2))
        self.noise(self.noise_buffer)
        fresh = self.ref_latent.unsqueeze(2).expand(-1, -1, W, -1, -1)
        fresh = self.schedule.add_noise(fresh, self.noise_buffer, self.timesteps[-1:])
        self.latent_pile[:, :, cfg.pile - W:].copy_(fresh)

    def _driving_conditions(self, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The new frames' keypoints to draw and the face crops for the motion encoder (on the first call the
        warm-up glide's keypoints and the reference face first), from ``frames_in``."""
        cfg, nets, dt = self.config, self.nets, self.dtype
        images = (self.frames_in.permute(0, 3, 1, 2).float() / 255.0 * 2 - 1).to(dt)
        cond = F.interpolate(images, size=(COND_SIZE, COND_SIZE), mode="bilinear", align_corners=False) / 2 + 0.5
        detector = nets.pose_encoder(cond)
        if first:
            self.frame0_t.copy_(detector["t"][:1])
            kp_draw, kps_dri = kp.warmup_keypoints(self.ref_detector, None, detector, num_interp=cfg.warmup_frames + 1)
        else:
            kp_draw, kps_dri = kp.transfer_keypoints(self.ref_detector, {"t": self.frame0_t}, detector)
        kp_draw, kps_dri = self._finite_keypoints(kp_draw, kps_dri)
        faces = crop_faces_device(images, kp.face_boxes(kps_dri, size=cfg.resolution))
        if first:
            ref_face = crop_faces_device(self.ref_image, kp.face_boxes(kp_draw[:1], size=cfg.resolution))
            faces = torch.cat([ref_face, faces])
        return kp_draw, faces

    def _finite_keypoints(self, *keypoints: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Flag non-finite keypoints on the device and make them safe to draw and to crop with.

        NaN/Inf keypoints (an fp16 overflow in the pose encoder, or a non-finite reference detection)
        would become out-of-range gather indices in the face crops: an indexing error on the CPU, and
        on CUDA a device-side assert that takes the whole process (every session of a server) down.
        So they are replaced by 0 and clamped, and the call's flag makes ``Output.wait`` raise
        ``NonFiniteError`` for it instead.
        """
        finite = torch.stack([torch.isfinite(k).all() for k in keypoints]).all()
        self.flags[FLAG_NONFINITE_POSE].copy_(~finite)
        return tuple(torch.nan_to_num(k, nan=0.0, posinf=0.0, neginf=0.0).clamp(-KEYPOINT_LIMIT, KEYPOINT_LIMIT)
                     for k in keypoints)

    def _denoise_and_decode(self, keyframes: int, test: Callable[[], None] | None, keep_latent: bool,
                            decode: bool = True) -> None:
        """The UNet over ``keyframes`` history banks, the DDIM step and (``decode``) the frames; ``test`` (the
        keyframe test, before the UNet) and ``keep_latent`` (the pile's first x0 kept for a keyframe write)."""
        cfg, dt = self.config, self.dtype
        W = cfg.window
        if test is not None:
            test()
        length = keyframes + 1
        kv = [tuple(t[:, : length * bank.tokens] for t in pair) for pair, bank in zip(self.kv, self.shapes.banks)]
        noise_pred = self.nets.denoising_unet(self.latent_pile, self.timesteps, self.clip_embeds, self.motion_pile,
                                              self.pose_pile, kv)
        fold = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731  (1,C,F,h,w) -> (F,C,h,w)
        prev, clean = self.schedule.step(fold(noise_pred).float(), self.timesteps, fold(self.latent_pile).float())
        stepped = torch.cat([clean[:W], prev[W:]]).to(dt)
        if keep_latent:
            self.keyframe_latent.copy_(clean[:1])
        self.latent_pile[:, :, : cfg.pile - W].copy_(stepped[W:].unsqueeze(0).transpose(1, 2))
        if not decode:  # a frame nobody sees (the offline mode's warm-up windows)
            self.flags[FLAG_NONFINITE].copy_(~torch.isfinite(stepped).all())
            return
        video = self.nets.vae_decoder(stepped[:W]).permute(0, 2, 3, 1)
        self.video.copy_(video)
        self.frames_out.copy_((self.video.float() * 255).to(torch.uint8))  # truncation, like the original
        finite = torch.isfinite(stepped).all() & torch.isfinite(self.video).all()
        self.flags[FLAG_NONFINITE].copy_(~finite)

    def _keyframe_test(self, keyframes: int) -> None:
        """Is the pile's first frame a new history keyframe? Decided on the device.

        Distance of its motion to the ``keyframes + 1`` banked motions; when it exceeds the threshold
        the motion joins the bank (slot ``keyframes + 1``) and the flag tells the host, which writes
        the keyframe's banks (from this call's clean latent) before the next call."""
        candidate = self.motion_pile[:, :1]
        bank = self.motion_bank[:, : keyframes + 1].flatten(2)[0].float()
        distances = torch.cdist(candidate.flatten(1).float(), bank)[0]
        wanted = distances.min() > self.threshold
        slot = self.motion_bank[:, keyframes + 1: keyframes + 2]
        slot.copy_(torch.where(wanted, candidate, slot))
        self.flags[FLAG_KEYFRAME].copy_(wanted)

    def _write_keyframe(self, slot: int) -> None:
        """Banks of the last flagged call's clean latent -> key/value slot ``slot``."""
        banks = write_banks(self.nets, self.keyframe_latent, self.clip_embeds)
        self._write_kv_slot(slot, self.nets.bank_projector(banks))

    def _write_kv_slot(self, slot: int, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for pair, projected, bank in zip(self.kv, kv, self.shapes.banks):
            for buffer, value in zip(pair, projected):
                buffer[:, slot * bank.tokens: (slot + 1) * bank.tokens].copy_(value)

    # ---- compiled networks and CUDA graphs ----------------------------------------------------------
    def check_key(self) -> tuple:
        """The call the start-up self-check compares (:mod:`.self_check`): the steady call with the keyframe
        test (every network of a call, plus the test), when the stream can take keyframes; else the plain one."""
        return ("steady", 0, self.config.online_keyframes > 0)

    def _stage_check_inputs(self, frames: np.ndarray, reference_seed: int | None = None) -> None:
        """The self-check's seeded inputs in place of a stream's: ``frames[1:]`` (``window`` of them) as the
        driving frames every warm-up call reads, and a reference: ``frames[0]`` fused through the runtime's own
        networks (for a compiled runtime this is the reference encoding's compile warm-up), or with
        ``reference_seed`` seeded normal values in the reference buffers instead, for a check that only compares
        graph replays with the same calls run eagerly: those agree on any inputs, random ones reveal a wrong
        binding as well as a portrait's, and encoding a portrait would cost about half a steady step (CPU, 64²,
        window 1) that a captured runtime does not spend at construction."""
        if reference_seed is None:
            self.fuse_reference(frames[0])
        else:
            self._fuse_seeded(reference_seed)
        with torch.no_grad(), self._on_stream():
            self.frames_in.copy_(torch.from_numpy(frames[1:]))

    def _warm_up(self, hooks: WarmUpHooks) -> None:
        """The construction's warm-up: compile every shape (compiled networks), then capture every graph.

        ``hooks`` run around it (the self-check: seeded inputs in place first, then its comparisons on the
        check key's warm-up calls); the runtime is left fresh (no reference fused) and the noise generator as it
        was, so the stream that follows is the one an unchecked runtime produces."""
        state = self.nets.compiled
        compiling = state is not None and not state.frozen
        if not (compiling or self.use_graphs):
            return  # nothing is warmed up, so there is nothing to check either
        try:
            with _generator_saved(self.generator):
                hooks.start(self)
                if compiling:
                    self._warm_compiled(hooks)
                if self.use_graphs:
                    self._capture_all(hooks)
        finally:
            hooks.finish(self)
            self.reset()

    def _warm_compiled(self, hooks: WarmUpHooks) -> None:
        """Compile every shape a stream runs compiled, then freeze: no recompilation during a stream.

        With compiled networks (:mod:`.compile`) each network compiles on its first call of a shape. The
        reference encoding (unless ``hooks`` fused one already) and every kind of call that runs compiled
        (:meth:`graph_keys`) run once here, on whatever the buffers hold (rewritten before being read, as for the
        graph warm-up), with noise from the runtime's own generator, which :meth:`_warm_up` restores afterwards (a
        caller's noise hook keeps its sequence). After that a recompilation raises."""
        cfg, noise = self.config, self.noise
        self.noise = lambda t: t.normal_(generator=self.generator)
        try:
            with torch.no_grad(), self._on_stream():
                if not self.reference_fused:
                    blank = np.zeros((cfg.resolution, cfg.resolution, 3), dtype=np.uint8)
                    encode_reference(self.nets, cfg, blank)
                for key in self.graph_keys():
                    with hooks.call(self, key, "compile"):
                        self._body(key)
            self._sync()
        finally:
            self.noise = noise
        self.nets.compiled.freeze()

    def _capture_all(self, hooks: WarmUpHooks) -> None:
        """Capture one graph per kind of call (at construction: the buffers hold no stream yet).

        Each body runs once eagerly on the runtime's stream first (lazy initialisation of cuBLAS/cuDNN
        handles and TensorRT contexts must not land in a graph; the self-check's ``hooks`` may run the check key's
        through the uncompiled networks, since a compiled runtime ran it compiled on this stream in
        :meth:`_warm_compiled` already). All graphs share one memory pool: they
        never run concurrently. :meth:`_warm_up` restores the noise generator afterwards, so the stream's noise
        is the same as without graphs. What the warm-up leaves in the buffers is overwritten before it is read:
        ``fuse_reference`` writes the reference and the warm-up pile, the first call the piles, a keyframe
        its bank slots.
        """
        pool = None
        for key in self.graph_keys():
            with hooks.call(self, key, "capture"):
                with torch.no_grad(), self._on_stream():
                    self._body(key)  # warm-up
                self._sync()
            self.graphs[key], pool = self._capture(key, pool)
            hooks.captured(self, key)
        self._sync()

    def _capture(self, key: tuple, pool) -> tuple[object, object]:
        """One call captured as a CUDA graph (sharing ``pool``); returns it and the pool."""
        graph = torch.cuda.CUDAGraph()
        if hasattr(graph, "register_generator_state"):
            graph.register_generator_state(self.generator)
        with torch.no_grad(), torch.cuda.graph(graph, pool=pool, stream=self.stream):
            self._body(key)
        return graph, graph.pool()

    def _sync(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()  # construction and self-check only, never in a stream's calls


class WarmUpHooks:
    """What runs around a :class:`StreamRuntime`'s construction warm-up (:meth:`StreamRuntime._warm_up`); this
    default does nothing. The start-up self-check (:class:`~personalive_trt.runtime.self_check.WarmUpCheck`) puts
    seeded inputs in place (``start``) and compares the fast path on the check key's warm-up calls: the compiled
    warm-up call against the same call through the uncompiled networks (stage ``"compile"``), the captured
    graph's replay against the eager warm-up call before its capture (``"capture"``, then ``captured``); with both,
    it runs that eager warm-up call through the uncompiled networks and compares the compiled call with it."""

    def start(self, runtime: StreamRuntime) -> None:
        """Before the first warm-up call."""

    @contextlib.contextmanager
    def call(self, runtime: StreamRuntime, key: tuple, stage: str) -> Iterator[None]:
        """Around one warm-up call of ``key`` (``stage``: ``"compile"`` or ``"capture"``)."""
        yield

    def captured(self, runtime: StreamRuntime, key: tuple) -> None:
        """After ``key``'s graph was captured (``runtime.graphs[key]``)."""

    def finish(self, runtime: StreamRuntime) -> None:
        """After the warm-up, whatever happened (the runtime is reset next)."""


@contextlib.contextmanager
def _generator_saved(generator: torch.Generator) -> Iterator[None]:
    state = generator.get_state()
    try:
        yield
    finally:
        generator.set_state(state)


def _backend_kind(networks: Networks) -> Backend | None:
    """The backend that runs every network (None: a mix, which is never captured by default)."""
    for cls, backend in ((TensorRTBackend, Backend.TENSORRT), (OnnxRuntimeBackend, Backend.ONNXRUNTIME),
                         (TorchBackend, Backend.TORCH)):
        if all(isinstance(b, cls) for b in networks.backends.values()):  # compiled torch backends included
            return backend
    return None
