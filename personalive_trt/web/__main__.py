"""``python -m personalive_trt.web --echo``: the web app around the EchoAnimator TEST DOUBLE (no model).

For load and soak tests of the serving path (``scripts/soak.py --spawn-echo``): same app, same limits, same
threads as ``personalive-trt serve``, with the animator replaced by :class:`~personalive_trt.live.testing.
EchoAnimator` (sleeps ``--echo-step-ms`` per step, blends input with the reference). Its frames mean nothing;
its timings and memory say how the server path behaves. Use ``personalive-trt serve`` for the real thing.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m personalive_trt.web", description=__doc__.splitlines()[0])
    parser.add_argument("--echo", action="store_true", help="required: serve the echo test double")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--echo-step-ms", type=float, default=20.0, help="simulated step time (4 frames)")
    parser.add_argument("--no-crop", action="store_true", help="resize instead of face framing")
    args = parser.parse_args(argv)
    if not args.echo:
        print("error: this entry point only serves the echo test double (--echo); use `personalive-trt serve`",
              file=sys.stderr)
        return 2
    import uvicorn

    from personalive_trt.config import StreamConfig
    from personalive_trt.live.testing import EchoAnimator
    from personalive_trt.web.app import ServeSettings, create_app

    settings = ServeSettings(crop=not args.no_crop)
    app = create_app(lambda: EchoAnimator(StreamConfig(resolution=args.resolution), args.echo_step_ms / 1000),
                     settings)
    uvicorn.run(app, host=args.host, port=args.port, ws_max_size=settings.max_message_bytes, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
