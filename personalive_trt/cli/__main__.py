"""``python -m personalive_trt.cli``: the ``personalive-trt`` command."""
from personalive_trt.cli import app

if __name__ == "__main__":
    app()
