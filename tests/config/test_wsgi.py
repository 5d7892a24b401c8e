"""The WSGI entry point that gunicorn loads in each worker."""
from __future__ import annotations

import gc
import importlib
import sys


def test_the_wsgi_entry_point_takes_what_it_loaded_out_of_the_collectors_reach() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    sys.modules.pop("config.wsgi", None)
    wsgi = importlib.import_module("config.wsgi")
    try:
        assert callable(wsgi.application)
        # Django, the apps and their libraries: far more objects than any request makes.
        assert gc.get_freeze_count() > 50_000
    finally:
        gc.unfreeze()


def test_the_wsgi_entry_point_keeps_numpys_blas_to_one_thread() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        sys.modules.pop("config.wsgi", None)
        importlib.import_module("config.wsgi")
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 1 for pool in blas)
    gc.unfreeze()
