"""``personalive-trt build`` and what it needs beyond the export and engine stages.

* :mod:`.driver` -- :func:`~.driver.build`: export every network to verified ONNX and build the engines;
* :mod:`.memory` -- will the build fit? its estimated peak host memory against what this process may use;
* :mod:`.download` -- the released weights from the Hugging Face Hub (``weights download``).
"""
