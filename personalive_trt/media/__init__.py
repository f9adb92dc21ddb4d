"""Media I/O and framing (floor 1: needs only numpy, PIL and, where used, PyAV, OpenCV and MediaPipe).

* :mod:`.io` -- images and video files (``HxWx3`` uint8 RGB), :class:`MediaError`; its names are re-exported here,
  so ``personalive_trt.media.read_image`` works as it did when this was one module;
* :mod:`.framing` -- face detection and the square crop around the face (references and driving frames);
* :mod:`.facemesh` -- the original offline script's FaceMesh crops (every frame on its own);
* :mod:`.sample` -- the built-in sample portrait and driving clip.
"""
from personalive_trt.media.io import (
    MediaError,
    VideoInfo,
    VideoReader,
    VideoWriter,
    check_output_path,
    probe_video,
    read_image,
)

__all__ = ["MediaError", "VideoInfo", "VideoReader", "VideoWriter", "check_output_path", "probe_video", "read_image"]
