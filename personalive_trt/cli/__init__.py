"""The ``personalive-trt`` command line. Each command parses, builds one options object, and calls one library
function; the options several commands share are declared once (:mod:`.params`).

* :mod:`.run` -- ``run``: file mode (:func:`personalive_trt.filemode.animate.animate_file`) or live mode
  (:func:`personalive_trt.live.runner.run_live`);
* :mod:`.serve` -- ``serve``: the web app (:func:`personalive_trt.web.launch.run_server`);
* :mod:`.build` -- ``build``: engines (:func:`personalive_trt.build.driver.build`) or the compile cache;
* :mod:`.weights` -- ``weights check`` / ``weights download``;
* :mod:`.bench` -- ``bench`` (:func:`personalive_trt.bench.benchmark.run_benchmark`).
"""
from __future__ import annotations

import typer

from personalive_trt.cli.bench import bench
from personalive_trt.cli.build import build
from personalive_trt.cli.params import fail, user_errors
from personalive_trt.cli.run import run
from personalive_trt.cli.serve import serve
from personalive_trt.cli.weights import weights_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="PersonaLive real-time portrait animation: run, build engines, manage weights.")
app.command()(run)
app.command()(serve)
app.command()(build)
app.add_typer(weights_app, name="weights")
app.command("bench", help="Measure the streaming loop: fps, latency, TFLOP/s, memory (see benchmarks/).")(bench)

__all__ = ["app", "fail", "user_errors"]

if __name__ == "__main__":
    app()
