"""``--side-by-side``: the original offline script's second ("concat") video, four panels per frame.

Each output frame i is shown beside what made it: the reference image | driving frame i's FaceMesh crop |
driving frame i | the generated frame. As in the original (``transforms.Resize((512, 512))`` on PIL images,
then ``torchvision.utils.make_grid(nrow=4)``), each panel is resized to 512x512 without keeping the aspect
(PIL bilinear, which antialiases when it shrinks) and the panels sit in one row with a 2-pixel black border
around and between them: 2058x516 frames. The original converts to floats and back (truncating), which can
make a panel pixel one level darker than here; the panels are a visual aid, not a checked output.

The driving frames are decoded a second time, in step with the output, so the run keeps no full-resolution
frames in memory.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from personalive_trt.media.facemesh import FaceMeshCrop
from personalive_trt.media.io import VideoReader, VideoWriter

__all__ = ["PANEL", "PADDING", "SidePanels", "panel_grid"]

#: The original's panel size (its ``-W``/``-H`` default) and make_grid's border.
PANEL = 512
PADDING = 2


def panel_grid(panels: Sequence[np.ndarray], size: int = PANEL, padding: int = PADDING) -> np.ndarray:
    """``panels`` ((H, W, 3) uint8 each, any sizes) resized to ``size`` x ``size`` (PIL bilinear) in one row,
    ``padding`` black pixels around and between them (make_grid's layout)."""
    step = size + padding
    grid = np.zeros((step + padding, len(panels) * step + padding, 3), np.uint8)
    for index, panel in enumerate(panels):
        resized = np.asarray(Image.fromarray(panel).resize((size, size), Image.BILINEAR))
        grid[padding:padding + size, padding + index * step:padding + index * step + size] = resized
    return grid


class SidePanels:
    """Writes the 4-panel video: :meth:`write` takes generated frame i (in order) and adds the panel row of
    driving frame i. A context manager: an error inside aborts the file (nothing half-written)."""

    def __init__(self, path: Path, reference: np.ndarray, crops: Sequence[FaceMeshCrop], driving: Path,
                 fps: float) -> None:
        self.reference, self.crops = reference, crops
        width = 4 * (PANEL + PADDING) + PADDING
        self.writer = VideoWriter(path, fps=fps, size=(width, PANEL + 2 * PADDING))
        try:
            self.reader = VideoReader(driving, max_frames=len(crops))
        except BaseException:
            self.writer.abort()
            raise
        self.index = 0

    def write(self, generated: np.ndarray) -> None:
        if self.index >= len(self.crops):
            raise ValueError(f"side-by-side: more generated frames than the {len(self.crops)} driving frames")
        frame = next(self.reader)
        crop = self.crops[self.index]
        self.writer.write(panel_grid([self.reference, crop.cut(frame), frame, generated]))
        self.index += 1

    def __enter__(self) -> SidePanels:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.reader.close()
        finally:
            self.writer.__exit__(exc_type, exc, tb)
