"""The ``serve`` web app: FastAPI + a static page (no Node build), see :mod:`personalive_trt.web.app`."""
from personalive_trt.web.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
