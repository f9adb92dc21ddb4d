"""Live mode: animate a live driving source (camera, stream, paced file) frame by frame.

The pieces, each usable on its own:

* :mod:`.slots` -- bounded hand-over points between threads (latest-frame-wins, never a growing queue);
* :mod:`.sources` -- capture threads for webcams, ``/dev/videoN``, RTSP/HTTP streams and files paced in real time;
* :mod:`.worker` -- the animation thread: gathers windows of fresh frames, steps the animator, tags every output
  with the capture time of the frame it animates (for glass-to-glass latency);
* :mod:`.sinks` -- where output frames go in ``run`` live mode: an mp4, a preview window, a virtual camera;
* :mod:`.runner` -- ``personalive-trt run`` in live mode, wiring the three together;
* :mod:`.testing` -- :class:`EchoAnimator`, a cheap stand-in animator (a test double) for the serving path.
"""
from personalive_trt.live.slots import FrameRing, LatestSlot
from personalive_trt.live.worker import (AnimationWorker, MalformedFrameError, MalformedStreamError, OutputFrame,
                                         StampedFrame, WorkerStats)

__all__ = ["AnimationWorker", "FrameRing", "LatestSlot", "MalformedFrameError", "MalformedStreamError",
           "OutputFrame", "StampedFrame", "WorkerStats"]
