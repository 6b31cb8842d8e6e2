"""fanout benchmarks: parallel speedup, orchestration overhead, parse time, Dask, kernels, memory.

``python -m bench`` (``make bench``) runs every benchmark and writes ``bench/results/<date>.json``
plus a markdown table; ``python -m bench --quick`` (``make bench-quick``) runs tiny sizes so the
code never rots. See ``bench/README.md`` for what each figure means.
"""
