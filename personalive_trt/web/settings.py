"""Limits and behaviour of the web app: one frozen record that every server running the session protocol reads
(the single-process ``serve`` and the Ray app's replicas, unchanged)."""
from __future__ import annotations

from dataclasses import dataclass, field

from personalive_trt.live.worker import MAX_MALFORMED_IN_A_ROW

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Limits and behaviour of the app (every field has a ``serve`` option or is fixed on purpose)."""

    max_sessions: int = 1  # animations at once (per replica under Ray); each needs its own animator (GPU memory)
    max_connections: int = 16  # open WebSockets (idle pages included); more are closed with 1013
    max_upload_bytes: int = 10 * MiB  # reference image upload
    max_image_pixels: int = 40_000_000  # decoded size guard (decompression bombs)
    max_message_bytes: int = 2 * MiB  # one WebSocket message (a driving JPEG)
    max_frame_side: int = 4096  # a driving frame larger than this is malformed
    max_malformed_in_a_row: int = MAX_MALFORMED_IN_A_ROW  # malformed driving frames in a row that end a session (close 1007)
    crop: bool = True  # frame driving frames and references around the face
    references_kept: int = 16  # uploaded references remembered (oldest forgotten)
    output_quality: int = 85  # JPEG quality of output frames
    stats_interval: float = 0.5  # seconds between stats messages
    close_when_busy: bool = False  # after 'busy', close the socket (1013): the Ray app, where a socket is a slot
    idle_timeout: float = 60.0  # a started session that sends no driving frame for this long, or a connection that
    # never starts one, is closed (4408); 0: never
    max_viewers: int = 4  # MJPEG viewers of one session at once; more are answered 429
    # Control (text) messages per second one connection may send, sustained; a burst of CONTROL_BURST_SECONDS' worth
    # passes. Over it the socket is closed (1008). 10/s is far above what a person clicking does (the page sends a
    # start, a swap per upload, an fps change) and far below what makes the worker's control slot churn. 0: no limit.
    control_rate: float = 10.0
    # The shared secret every request but /api/health must carry (personalive_trt.web.auth); None: no check (the
    # loopback default). Kept out of repr so that a logged settings record never shows it.
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.max_viewers < 1:
            raise ValueError(f"--max-viewers {self.max_viewers}: expected >= 1")
        if self.control_rate < 0:
            raise ValueError(f"--control-rate {self.control_rate}: expected >= 0 messages per second (0: no limit)")
        if self.idle_timeout < 0:
            raise ValueError(f"--idle-timeout {self.idle_timeout}: expected >= 0 seconds")


#: Control messages that pass at once before the rate limit applies, in seconds of ``control_rate``.
CONTROL_BURST_SECONDS = 2.0
