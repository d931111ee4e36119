"""How torch's CPU worker threads wait between parallel regions, set once per process before torch is loaded.

torch's CPU wheels run their intra-op parallelism on GNU OpenMP (libgomp). By default an idle worker spins for up
to 300,000 iterations waiting for the next parallel region. On a machine of its own that saves a wake-up per region;
on a shared one (a server always is: other workers, request threads, the host's other jobs) the spinning thread
keeps its core while the thread it waits for is descheduled, so each of the hundreds of small regions of a GPT
decoding step can cost a whole scheduler slice. Measured on the 2-core development VM (2 threads, full v2 size;
docs/benchmarks.md, "contention"): with glibc's default spinning, a float32 GPT decode beside two CPU-bound
processes used 140-360 CPU ms per token against 48 quiet (24 ms wall); with a spin count of 2000 it uses about
29-31 quiet (the same wall time within 3-8%; int8 decoding and the SoVITS decode unchanged) and about the same
under contention. OMP_WAIT_POLICY=PASSIVE is as good under contention but 30-90% slower quiet.

libgomp reads its settings once, when it is loaded (by `import torch`), so the fronts call `configure_waiting`
before anything imports torch: the `narrator` command line (cli/main.py), the service (serving/service.py) and the
benchmark adapters. A value the user set in the environment always wins.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"  # OpenMP's standard variable: ACTIVE (spin) or PASSIVE (sleep at once)
SPIN_COUNT_ENV = "GOMP_SPINCOUNT"  # libgomp's: how long an idle worker spins before it sleeps
DEFAULT_SPIN_COUNT = "2000"  # bridges back-to-back regions when quiet, gives the core up soon when it is shared


def configure_waiting(spin_count: str = DEFAULT_SPIN_COUNT) -> bool:
    """Bound how long torch's idle OpenMP workers spin (`GOMP_SPINCOUNT`) unless the environment already says how
    they wait (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`). Returns False when torch is already loaded, so the setting
    could not take effect in this process (the caller imported torch too early)."""
    if WAIT_POLICY_ENV not in os.environ and SPIN_COUNT_ENV not in os.environ:
        os.environ[SPIN_COUNT_ENV] = spin_count
    return "torch" not in sys.modules
