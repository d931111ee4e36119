"""Run every benchmark in bench/ and print its table (`make bench`)."""

import importlib
import pkgutil
import sys
from pathlib import Path

for module in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])):
    if module.startswith("_"):
        continue
    print(f"\n== bench.{module}", flush=True)
    sys.argv = [f"bench.{module}"]
    importlib.import_module(f"bench.{module}").main()
