"""Reference attention ("banks"): how the reference UNet conditions the denoising UNet.

PersonaLive runs a 2-D copy of the SD UNet (the reference UNet) on the reference latent at t = 0.
Every spatial transformer block of that UNet *writes* its self-attention input, i.e. the
post-``norm1`` activations ``(B, HW, C)``, into a "bank". The matching block of the denoising UNet
(same module path) *reads* it: its self-attention keeps the frame's own tokens as queries and
attends to ``concat(frame tokens, bank tokens)`` on the key/value side. The same bank serves every
frame of the pile. History keyframes are extra banks (the reference UNet run on an earlier output
latent) appended on the token axis after the reference bank.

Both roles are diffusers attention processors installed on ``BasicTransformerBlock.attn1``:

* :class:`ReferenceWriterProcessor` records the tensor it receives (= ``norm1(hidden_states)``)
  and then does ordinary self-attention.
* :class:`ReferenceReaderProcessor` does self-attention whose keys/values are extended with the
  bank bound for the current forward call.

Banks travel through the processors only for the duration of one forward call
(:func:`recording_banks`, :func:`bound_banks`). The tensors are real inputs/outputs of the traced
graph: the writer's recorded tensors are *returned* by the reference UNet and the reader's bank
comes from a forward argument, so tracing (``torch.jit.trace``/``torch.export``/ONNX) sees the whole
data flow; only the plumbing between module and processor is Python.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from torch import nn


def bank_block_names(unet: nn.Module) -> list[str]:
    """Module paths of the blocks that write/read reference banks, in canonical order.

    The canonical order is the module-definition order (``named_modules`` DFS) of the spatial
    ``BasicTransformerBlock``s whose ``attn1`` is a self-attention. For the SD1.x topology that is
    16 blocks: ``down_blocks.{0,1,2}.attentions.{0,1}``, ``up_blocks.{1,2,3}.attentions.{0,1,2}``
    and ``mid_block.attentions.0`` (diffusers registers ``up_blocks`` before ``mid_block``), each
    followed by ``.transformer_blocks.0``. The reference UNet and the denoising UNet use the same
    paths, which is how the original pairs writers with readers (its channel-sorted pairing lands on
    identical paths for this topology).
    """
    return [
        name
        for name, module in unet.named_modules()
        if isinstance(module, BasicTransformerBlock) and not module.attn1.is_cross_attention
    ]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, heads*d) -> (N, heads, L, d)."""
    n, length, inner = x.shape
    return x.reshape(n, length, heads, inner // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, L, d) -> (N, L, heads*d)."""
    n, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * d)


def _check_plain_attention(attn: Attention) -> None:
    """The processors below implement the plain SD self-attention only; refuse anything fancier."""
    if (attn.group_norm is not None or attn.spatial_norm is not None or attn.norm_q is not None
            or attn.norm_k is not None or attn.residual_connection or attn.rescale_output_factor != 1.0
            or attn.norm_cross):
        raise ValueError("reference-attention processors support only plain (SD-style) self-attention layers")


def _output(attn: Attention, attended: torch.Tensor) -> torch.Tensor:
    return attn.to_out[1](attn.to_out[0](_merge_heads(attended)))


class ReferenceWriterProcessor:
    """attn1 processor of the reference UNet: records its input, then plain self-attention.

    ``recorded`` holds the last input seen (the post-``norm1`` tokens, model dtype); the owning UNet
    reads it right after its forward and resets it (see :func:`recording_banks`).
    """

    def __init__(self) -> None:
        self.recorded: torch.Tensor | None = None

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("ReferenceWriterProcessor is for unmasked self-attention (attn1) only")
        _check_plain_attention(attn)
        self.recorded = hidden_states
        q = _split_heads(attn.to_q(hidden_states), attn.heads)
        k = _split_heads(attn.to_k(hidden_states), attn.heads)
        v = _split_heads(attn.to_v(hidden_states), attn.heads)
        return _output(attn, F.scaled_dot_product_attention(q, k, v))


def project_bank(attn: Attention, bank: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value projections ``(B, N, inner)`` of a bank, as the reading block computes them.

    The bank is cast to ``dtype`` first (the original keeps banks in fp16 and lets ``torch.cat``
    promote them to the activations' dtype before the projection)."""
    bank = bank.to(dtype)
    return attn.to_k(bank), attn.to_v(bank)


class ReferenceReaderProcessor:
    """attn1 processor of the denoising UNet: self-attention extended with a reference bank.

    With ``hidden_states`` of shape ``(B*F, HW, C)`` (frames folded into the batch, b-major), each
    frame's queries attend to ``concat(own tokens, bank tokens)``. The bank is bound either raw
    (``bank``: ``(B, N, C)``, N = reference tokens + keyframe tokens) or already projected (``kv``:
    its key and value, ``(B, N, inner)`` each, see :func:`project_bank`). It is identical for the F
    frames of a batch item, so its projections are broadcast over the frames, which equals
    projecting the frame-repeated concatenation of the original. The projections of a bank never
    change while it is in use, so a streaming runtime binds ``kv`` computed once per reference or
    keyframe instead of reprojecting the bank on every call. Without either this is plain
    self-attention.
    """

    def __init__(self) -> None:
        self.bank: torch.Tensor | None = None
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("ReferenceReaderProcessor is for unmasked self-attention (attn1) only")
        _check_plain_attention(attn)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        bank_kv = project_bank(attn, self.bank, hidden_states.dtype) if self.bank is not None else self.kv
        if bank_kv is not None:
            bank_key, bank_value = (x.to(hidden_states.dtype) for x in bank_kv)
            batch, tokens, inner = bank_key.shape
            frames = hidden_states.shape[0] // batch

            def per_frame(projected: torch.Tensor) -> torch.Tensor:
                # (B, N, D) -> (B*F, N, D), b-major like the folded hidden states
                return projected[:, None].expand(batch, frames, tokens, inner).reshape(batch * frames, tokens, inner)

            key = torch.cat([key, per_frame(bank_key)], dim=1)
            value = torch.cat([value, per_frame(bank_value)], dim=1)
        q = _split_heads(attn.to_q(hidden_states), attn.heads)
        k = _split_heads(key, attn.heads)
        v = _split_heads(value, attn.heads)
        return _output(attn, F.scaled_dot_product_attention(q, k, v))


def install_processors(unet: nn.Module, names: Sequence[str], processor_cls: type) -> list:
    """Give each named block's ``attn1`` a fresh ``processor_cls()``; returns them in ``names`` order."""
    processors = []
    for name in names:
        processor = processor_cls()
        unet.get_submodule(name).attn1.set_processor(processor)
        processors.append(processor)
    return processors


@contextlib.contextmanager
def recording_banks(writers: Sequence[ReferenceWriterProcessor]) -> Iterator[list]:
    """Collect the writers' recorded inputs of one forward pass.

    Yields a list that is filled (in ``writers`` order) when the ``with`` body finishes without an
    error; the writers are reset either way so no activation outlives the call.
    """
    for writer in writers:
        writer.recorded = None
    banks: list = []
    try:
        yield banks
        missing = [i for i, writer in enumerate(writers) if writer.recorded is None]
        if missing:
            raise RuntimeError(f"reference writers {missing} recorded nothing during the forward pass")
        banks.extend(writer.recorded for writer in writers)
    finally:
        for writer in writers:
            writer.recorded = None


@contextlib.contextmanager
def bound_banks(readers: Sequence[ReferenceReaderProcessor], banks: Sequence[torch.Tensor] | None = None,
                kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Iterator[None]:
    """Bind one raw bank, or one projected (key, value) pair, per reader for one forward pass
    (neither: no reference attention)."""
    if banks is not None and kv is not None:
        raise ValueError("bind either raw banks or projected (key, value) pairs, not both")
    for what, values in (("reference banks", banks), ("reference key/value pairs", kv)):
        if values is not None and len(values) != len(readers):
            raise ValueError(f"expected {len(readers)} {what}, got {len(values)}")
    try:
        for i, reader in enumerate(readers):
            reader.bank = None if banks is None else banks[i]
            reader.kv = None if kv is None else tuple(kv[i])
        yield
    finally:
        for reader in readers:
            reader.bank = None
            reader.kv = None
