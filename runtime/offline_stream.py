"""The offline mode on the streaming runtime: the original's offline loop (:mod:`.offline_loop`) on
:class:`~personalive_trt.runtime.stream.StreamRuntime`'s preallocated buffers and CUDA graphs.

What differs from the online runtime, and how:

* **Inputs.** A window is the prepared clip's Lanczos images (``cond`` 256² for the pose encoder, ``faces``
  224² FaceMesh crops for the motion encoder, uint8), staged straight from the clip into two pinned host rings
  (``np.take`` into the ring slot: no host allocation) and converted on the device exactly as
  :meth:`PreparedClip.window <personalive_trt.filemode.offline.PreparedClip.window>` converts them. The first
  window runs the pose encoder on frame 0 alone too (the translation anchor) and the motion encoder on the
  reference face followed by the window's faces (F = 5).
* **Keyframes.** The original's rule: the test runs while the motion bank holds fewer than
  ``1 + max_keyframes`` entries, on the newest chunk's first frame, on the device (distance, verdict, the
  motion-bank slot and the flag). Its flag is sticky: the host mirrors it, reading the device flag only after a
  window that tested (the one wait the online runtime also has); after the third tested keyframe every window
  appends a bank with no wait at all. A bank is appended at the start of the next window, from the kept x0 of
  the pile's oldest frame, as the reference loop appends it at the end of this one (it is read from the next
  window on in both), up to the run's ``keyframe_limit``.
* **Bank slots.** ``1 + max_keyframe_banks(N)`` key/value slots, allocated before the first window from the
  clip's frame count N; :func:`check_bank_memory` refuses in one line when they would not fit.
* **Graphs.** Captured per bank length while a length can persist -- 1..4 banks (the reference and up to 3
  tested keyframes, which the test may hold for many windows) and the limit -- and eager in the growing regime
  between them, where each length serves exactly one window (a graph would be captured to be replayed once).
  The warm-up windows (the first ``steps - 1``, whose frames the offline mode drops) skip the decode.
* **torch.compile** (``--compile``, :mod:`.compile`): the same split. The kinds of window that are captured
  are the ones compiled at construction (at most 5 bank lengths of the denoising UNet, whatever N and the
  limit); the growing regime's windows run the same modules uncompiled (dynamo's ``force_eager`` stance), so
  no bank length is compiled for the one window that uses it (a compile costs far more than that window) and
  none raises the frozen networks' recompilation error.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from personalive_trt.config import COND_SIZE, FACE_SIZE, StreamConfig
from personalive_trt.engines.networks import Networks
from personalive_trt.models import keypoints as kp
from personalive_trt.runtime.offline_loop import PreparedReference, max_keyframe_banks, window_frames
from personalive_trt.runtime.reference_loop import clip_pixels, encode_prepared_reference, lanczos, unit_range
from personalive_trt.runtime.stream import FLAG_KEYFRAME, NoiseFn, StreamRuntime, WarmUpHooks

__all__ = ["OfflineStreamRuntime", "bank_bytes", "check_bank_memory"]

#: Bank lengths up to this many history keyframes are captured (the tested keyframes can hold them).
CAPTURED_KEYFRAMES = 3


def bank_bytes(networks: Networks, banks: int) -> int:
    """Bytes of the key/value slot buffers for ``banks`` banks (the reference + history keyframes)."""
    dtypes = networks.backends["denoising_unet"].input_dtypes
    total = 0
    for i, names in enumerate(networks.kv_names):
        shape = networks.shapes.bank(i, banks)
        total += sum(int(np.prod(shape)) * torch.empty((), dtype=dtypes[name]).element_size() for name in names)
    return total


def available_memory(device: torch.device) -> int:
    """Free bytes where the buffers go: the CUDA device's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_bank_memory(networks: Networks, frames: int, banks: int, keyframe_limit: int) -> None:
    """Refuse in one line when the bank slots of an N-frame run would not fit in the free memory."""
    needed = bank_bytes(networks, 1 + banks)
    free = available_memory(networks.device)
    if needed > free:
        raise MemoryError(f"--mode offline: {frames} frames need {1 + banks} keyframe bank slots "
                          f"({needed / 2**20:.0f} MiB of key/value buffers) but {networks.device} has "
                          f"{free / 2**20:.0f} MiB free; lower --keyframe-limit (now {keyframe_limit}) or "
                          "--max-frames")


class OfflineStreamRuntime(StreamRuntime):
    """The offline loop (:class:`~personalive_trt.runtime.offline_loop.OfflineAnimator`'s arithmetic) on the
    streaming runtime, for one clip length.

    Args:
        networks (`Networks`): as for :class:`StreamRuntime`.
        frames (`int`): N, the clip's frame count (a multiple of the window): sizes the bank slots.
        config (`StreamConfig`, *optional*): the networks' (an :func:`~.offline_loop.offline_config`).
        keyframe_limit (`int`, *optional*): banks appended at most; defaults to ``config.keyframe_banks``.
        noise, seed, graphs, ring, hooks: as for :class:`StreamRuntime`.

    :meth:`fuse_reference` takes a :class:`PreparedReference`; :meth:`submit_window` one window of a
    :class:`~personalive_trt.filemode.offline.PreparedClip`; :meth:`animate` runs the whole clip.
    """

    def __init__(self, networks: Networks, frames: int, config: StreamConfig | None = None,
                 keyframe_limit: int | None = None, noise: NoiseFn | None = None, seed: int = 42,
                 graphs: bool | None = None, ring: int = 2, hooks: WarmUpHooks | None = None) -> None:
        config = config or networks.shapes.config
        limit = config.keyframe_banks if keyframe_limit is None else keyframe_limit
        if not 0 <= limit <= config.keyframe_banks:
            raise ValueError(f"OfflineStreamRuntime: keyframe_limit {limit} is not in 0..{config.keyframe_banks} "
                             "(the banks the networks hold)")
        self.frames = frames
        self.windows = window_frames(frames, config)
        self.keyframe_limit = limit
        self.bank_slots = max_keyframe_banks(frames, dataclasses.replace(config, bank_capacity=limit))
        check_bank_memory(networks, frames, self.bank_slots, limit)
        super().__init__(networks, config, noise=noise, seed=seed, graphs=graphs, ring=ring, hooks=hooks)

    @property
    def description(self) -> str:
        return "offline " + super().description

    # ---- buffers ---------------------------------------------------------------------------------------
    def _bank_length_capacity(self) -> int:
        return 1 + self.bank_slots

    def _allocate(self) -> None:
        super()._allocate()
        W, dev, dt = self.config.window, self.device, self.dtype
        pin = dev.type == "cuda"
        self.cond_in = torch.zeros(W, COND_SIZE, COND_SIZE, 3, dtype=torch.uint8, device=dev)
        self.faces_in = torch.zeros(W, FACE_SIZE, FACE_SIZE, 3, dtype=torch.uint8, device=dev)
        self.ref_face = torch.zeros(1, 3, FACE_SIZE, FACE_SIZE, dtype=dt, device=dev)
        self.host_cond = torch.zeros(self.ring, W, COND_SIZE, COND_SIZE, 3, dtype=torch.uint8, pin_memory=pin)
        self.host_faces = torch.zeros(self.ring, W, FACE_SIZE, FACE_SIZE, 3, dtype=torch.uint8, pin_memory=pin)
        self._host_cond_np, self._host_faces_np = self.host_cond.numpy(), self.host_faces.numpy()

    # ---- session state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self.entries = 1  # motion-bank entries (the reference motion + tested keyframes), mirrored from the device
        self.add_flag = False  # the original's sticky add_flag, mirrored from the device flag

    @torch.no_grad()
    def fuse_reference(self, image: PreparedReference) -> None:
        """Encode a prepared reference (the whole portrait, its face crop) and prime the pile."""
        if not isinstance(image, PreparedReference):
            raise TypeError("fuse_reference: the offline runtime takes a PreparedReference, got "
                            f"{type(image).__name__}")
        resolution = self.config.resolution
        if image.image.shape != (resolution, resolution, 3):
            raise ValueError(f"fuse_reference: the reference was prepared at {image.image.shape[:2]}, "
                             f"the stream runs at {resolution}x{resolution}")

        def write() -> None:
            self._write_reference(encode_prepared_reference(
                self.nets, image.clip_pixels, unit_range(image.image, resolution),
                unit_range(image.cond, COND_SIZE) / 2 + 0.5))
            self.ref_face.copy_(unit_range(image.face, FACE_SIZE))

        self._fuse(write)

    def _write_seeded_reference(self, generator: torch.Generator) -> None:
        super()._write_seeded_reference(generator)
        self.ref_face.normal_(generator=generator)

    def submit(self, frames: np.ndarray) -> int:
        raise TypeError("submit: the offline runtime takes the windows of a PreparedClip (submit_window, animate), "
                        "not 512 frames")

    # ---- windows -----------------------------------------------------------------------------------------
    def submit_window(self, clip, indices: Sequence[int]) -> int:
        """Enqueue one window: the prepared ``clip``'s frames ``indices`` (an entry of ``self.windows``)."""
        if self.count >= len(self.windows):
            raise RuntimeError(f"submit_window: the runtime was sized for {self.frames} frames "
                               f"({len(self.windows)} windows); reset() for another clip")
        if clip.cond.shape[1:] != (COND_SIZE, COND_SIZE, 3) or clip.faces.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
            raise ValueError(f"submit_window: expected a PreparedClip (cond (N,{COND_SIZE},{COND_SIZE},3), faces "
                             f"(N,{FACE_SIZE},{FACE_SIZE},3)), got {clip.cond.shape} and {clip.faces.shape}")

        def stage(slot: int) -> None:
            np.take(clip.cond, indices, axis=0, out=self._host_cond_np[slot])
            np.take(clip.faces, indices, axis=0, out=self._host_faces_np[slot])

        return self._submit(stage, [(self.cond_in, self.host_cond), (self.faces_in, self.host_faces)])

    def animate(self, clip) -> Iterator[np.ndarray]:
        """The whole prepared clip (N = ``self.frames``): yields the N output frames, a window ((W,R,R,3) uint8,
        a copy) at a time, driving frames 0..N-1 in order; up to ``ring`` windows in flight."""
        if clip.frames != self.frames:
            raise ValueError(f"animate: the runtime was sized for {self.frames} frames, the clip has {clip.frames}")
        warmup = self.config.steps - 1
        for indices in self.windows:
            if len(self._pending) >= self.ring:
                yield from self._deliver(warmup)
            self.submit_window(clip, indices)
        while self._pending:
            yield from self._deliver(warmup)

    def _deliver(self, warmup: int) -> Iterator[np.ndarray]:
        output = self.collect()
        frames = output.wait()
        if output.index >= warmup:
            yield frames.copy()  # the ring slot is reused ``ring`` windows later

    # ---- host-side scheduling ------------------------------------------------------------------------
    def _keyframe_from_previous_call(self) -> bool:
        """Does this window start by appending a bank? The previous window's (sticky) verdict, read from its
        pinned flag only when that window tested (it waits for that window, as the online runtime does)."""
        slot, self._flag_slot = self._flag_slot, None
        if slot is not None:
            self._done[slot].synchronize()  # unavoidable: which graph runs next depends on this verdict
            self.add_flag = bool(self._host_flags_np[slot][FLAG_KEYFRAME] > 0)
            if self.add_flag:
                self.entries += 1
        return self.count > 0 and self.add_flag and self.keyframes < self.keyframe_limit

    def _call_key(self, index: int) -> tuple:
        """("steady", banks in effect, motion entries tested against (0: no test), keep the x0, decode)."""
        cfg = self.config
        if index == 0:
            return ("first",)
        tested = index > cfg.keyframe_start and self.entries < cfg.motion_bank_capacity
        keep = self.keyframes < self.keyframe_limit and (tested or self.add_flag)
        return ("steady", self.keyframes, self.entries if tested else 0, keep, index >= cfg.steps - 1)

    def all_keys(self) -> list[tuple]:
        """Every kind of window an N-frame run can make (:meth:`graph_keys`: those captured and compiled)."""
        cfg, top, limit = self.config, self.bank_slots, self.keyframe_limit
        windows = len(self.windows)
        keys: list[tuple] = [("first",)]
        if cfg.steps > 2:
            keys.append(("steady", 0, 0, False, False))
        keys.append(("steady", 0, 0, False, True))
        if windows - 1 > cfg.keyframe_start:  # some window tests
            # (a test in a warm-up window, which skips the decode, only where the test starts that early)
            decodes = (True, False) if cfg.keyframe_start + 1 < cfg.steps - 1 else (True,)
            for entries in range(1, cfg.motion_bank_capacity):
                banks = min(entries - 1, limit)
                keys += [("steady", banks, entries, banks < limit, decode) for decode in decodes]
        # After the tested keyframes (or at the limit) the sticky flag appends a bank per window.
        for banks in range(min(cfg.max_keyframes, limit), top + 1):
            if banks:
                keys.append(("steady", banks, 0, banks < limit, True))
        keys += [("keyframe", slot) for slot in range(1, top + 1)]
        return list(dict.fromkeys(key for key in keys if key[0] != "steady" or key[1] <= top))

    def check_key(self) -> tuple:
        """The window the start-up self-check compares: the first steady, decoded window kind with the keyframe
        test (against the reference motion) when some window tests; else the plain steady window."""
        steady = [key for key in self.all_keys() if key[0] == "steady" and key[4] and key[1] == 0]  # all captured
        return next((key for key in steady if key[2]), steady[0])

    def _stage_check_inputs(self, frames: np.ndarray, reference_seed: int | None = None) -> None:
        """The self-check's seeded inputs (see :meth:`StreamRuntime._stage_check_inputs`) in the offline runtime's
        form: ``frames[0]`` prepared as a reference (its resizes standing in for the face crop) or seeded values,
        the driving frames resized to the pose encoder's and motion encoder's inputs."""
        portrait = frames[0]
        if reference_seed is None:
            self.fuse_reference(PreparedReference(clip_pixels(portrait), portrait, lanczos(portrait, COND_SIZE),
                                                  lanczos(portrait, FACE_SIZE), crop=None))
        else:
            self._fuse_seeded(reference_seed)
        with torch.no_grad(), self._on_stream():
            self.cond_in.copy_(torch.from_numpy(np.stack([lanczos(f, COND_SIZE) for f in frames[1:]])))
            self.faces_in.copy_(torch.from_numpy(np.stack([lanczos(f, FACE_SIZE) for f in frames[1:]])))

    def graph_keys(self) -> list[tuple]:
        """The lengths that can persist: up to CAPTURED_KEYFRAMES history banks, and the limit (captured as CUDA
        graphs and, with compiled networks, the only kinds compiled)."""
        def persists(key: tuple) -> bool:
            if key[0] == "first":
                return True
            banks = key[1]
            return banks <= CAPTURED_KEYFRAMES or (banks == self.keyframe_limit and key[0] == "steady")

        return [key for key in self.all_keys() if persists(key)]

    @functools.cached_property
    def _compiled_keys(self) -> frozenset:
        return frozenset(self.graph_keys())

    def _run(self, key: tuple) -> None:
        """A kind of window outside :meth:`graph_keys` runs eager; with compiled networks uncompiled too (the
        module docstring): it was not compiled at construction, and compiling it now would be a recompilation."""
        if self.nets.compiled is None or key in self._compiled_keys:
            super()._run(key)
            return
        with torch.compiler.set_stance("force_eager"):
            super()._run(key)

    def _body(self, key: tuple) -> None:
        if key[0] == "first":
            self._advance(first=True)
            self._denoise_and_decode(keyframes=0, test=None, keep_latent=False, decode=self.config.steps == 1)
        elif key[0] == "steady":
            _, banks, entries, keep, decode = key
            self._advance(first=False)
            self._denoise_and_decode(banks, test=(lambda: self._offline_test(entries)) if entries else None,
                                     keep_latent=keep, decode=decode)
        else:
            self._write_keyframe(key[1])

    # ---- one window, on device buffers only ------------------------------------------------------------
    def _driving_conditions(self, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`OfflineAnimator._advance_conditions <.offline_loop.OfflineAnimator._advance_conditions>`:
        the whole frames to the pose encoder (and frame 0 alone at the first window), the FaceMesh crops (the
        reference face first at the first window) to the motion encoder."""
        nets, dt, cfg = self.nets, self.dtype, self.config
        # PreparedClip.window's conversion: [-1, 1] in fp32, then (2x-1)/2+0.5, then the networks' dtype.
        cond = ((self.cond_in.permute(0, 3, 1, 2).float() / 255.0 * 2 - 1) / 2 + 0.5).to(dt)
        faces = (self.faces_in.permute(0, 3, 1, 2).float() / 255.0 * 2 - 1).to(dt)
        if first:  # before the window's call: an engine's output buffer is reused by the next call
            self.frame0_t.copy_(nets.pose_encoder(cond[:1])["t"])
        detector = nets.pose_encoder(cond)
        if first:
            kp_draw, kps_dri = kp.warmup_keypoints(self.ref_detector, None, detector,
                                                   num_interp=cfg.warmup_frames + 1)
            faces = torch.cat([self.ref_face, faces])
        else:
            kp_draw, kps_dri = kp.transfer_keypoints(self.ref_detector, {"t": self.frame0_t}, detector)
        kp_draw, _ = self._finite_keypoints(kp_draw, kps_dri)
        return kp_draw, faces

    def _offline_test(self, entries: int) -> None:
        """The original's test: the newest chunk's motion against the ``entries`` banked motions, frame 0's
        minimum distance decides; the verdict is the (sticky) flag, and on add that frame joins the bank."""
        cfg = self.config
        newest = self.motion_pile[:, cfg.pile - cfg.window:]
        distances = torch.cdist(newest.flatten(2)[0].float(), self.motion_bank[:, :entries].flatten(2)[0].float())
        wanted = distances[0].min() > self.threshold
        slot = self.motion_bank[:, entries: entries + 1]
        slot.copy_(torch.where(wanted, newest[:, :1], slot))
        self.flags[FLAG_KEYFRAME].copy_(wanted)
