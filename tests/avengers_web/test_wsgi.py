"""The WSGI entry point that gunicorn loads in each worker."""
from __future__ import annotations

import gc
import importlib
import sys


def test_the_wsgi_entry_point_takes_what_it_loaded_out_of_the_collectors_reach() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    sys.modules.pop("avengers_web.wsgi", None)
    wsgi = importlib.import_module("avengers_web.wsgi")
    try:
        assert callable(wsgi.application)
        # Django, the apps and their libraries: far more objects than any request makes.
        assert gc.get_freeze_count() > 50_000
    finally:
        gc.unfreeze()
