"""``set_threads`` lives in ``pipeline.runtime`` now; this name stays for the modules and
benchmarks that still import it from here (``pipeline/train.py``, ``pipeline/pretrain.py``,
``tests/benchmarks/bench_score.py`` and ``bench_train.py``). New code imports
``pipeline.runtime.set_threads``.
"""

from pipeline.runtime import set_threads

__all__ = ["set_threads"]
