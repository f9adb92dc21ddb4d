"""File mode of ``personalive-trt run``: animate a reference portrait with a driving video file into an mp4.

* :mod:`.animate` -- ``--mode stream`` (the default): the online loop, as the original's web demo runs it;
* :mod:`.offline` -- ``--mode offline``: the original's offline script (``inference_offline.py``): its inputs
  prepared, the driver; :mod:`.offline_run` its options and the files (:mod:`.panels`: ``--side-by-side``);
* :mod:`.threads` -- the decode prefetcher and the background writer.
"""
