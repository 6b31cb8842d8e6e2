"""``python -m bench [--quick] [--out FILE] [--no-readme]``: see ``bench/run.py`` and bench/README.md."""

import sys
from pathlib import Path


def _main() -> int:
    plugins = str(Path(__file__).resolve().parents[1] / "plugins")
    if plugins not in sys.path:  # fanout is not installed; Airflow finds it in plugins/ as well
        sys.path.insert(0, plugins)
    from bench.run import main

    return main()


if __name__ == "__main__":
    sys.exit(_main())
