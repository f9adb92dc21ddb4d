"""File mode of ``personalive-trt run``: animate a reference portrait with a driving video file into an mp4."""
