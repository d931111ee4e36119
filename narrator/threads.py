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
benchmark adapters. A value the user set in the environment always wins. numba's OpenMP pool (the compiled GPT step,
models/kernels.py) loads the system's libgomp later and reads the same variable.

`ThreadGovernor` goes further for a loop of short parallel steps: it times them and runs them on one thread while
that is faster, which is what a shared machine makes it.
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


class ThreadGovernor:
    """Chooses how many threads each step of a long loop of short parallel steps runs on (a GPT decode: one step
    per token), by timing them: all `max_threads` while they are faster, one thread while the machine is shared.

    A parallel step on a busy machine waits for its slowest thread, and a thread the scheduler has paused holds up
    the others (which spin, then sleep and wake). With one other CPU-bound process on the 2-core development VM,
    the int8 decoding step on both cores took about twice the CPU time per token it took quiet; on one thread it
    keeps its quiet CPU time and most of its wall time (docs/benchmarks.md, "contention").

    Policy: run at the current choice; after `first_probe` steps, and then every `period` steps, run `probe`
    steps at the other count, and keep whichever count gave the shorter median step: the current count's last
    `window` steps against the probe's (the larger count only if faster by `margin`, since it costs more CPU for
    the same token). Medians of several steps keep one slow step (a scheduler hiccup) from deciding. Not
    thread-safe: one governor per loop.
    """

    def __init__(self, max_threads: int, first_probe: int = 16, period: int = 96, probe: int = 3,
                 window: int = 8, margin: float = 0.1):
        self.max_threads = max(1, max_threads)
        self.first_probe, self.period, self.probe, self.window, self.margin = (first_probe, period, probe,
                                                                               window, margin)
        self.current = self.max_threads
        self._step = 0
        self._next_probe = first_probe
        self._times: dict[int, list[float]] = {}  # thread count -> its recent step times (s)

    def threads(self) -> int:
        """How many threads the next step runs on."""
        if self.max_threads == 1:
            return 1
        probing = self._next_probe <= self._step < self._next_probe + self.probe
        return self._other() if probing else self.current

    def record(self, threads: int, seconds: float) -> None:
        """The step just run took `seconds` on `threads` threads."""
        if self._step == self._next_probe:  # a probe starts: only its own steps count for the probed count
            self._times[threads] = []
        recent = self._times.setdefault(threads, [])
        recent.append(seconds)
        del recent[:-self.window]
        self._step += 1
        if self._step == self._next_probe + self.probe:  # a probe just ended: decide, schedule the next
            self._decide()
            self._next_probe = self._step + self.period

    def _other(self) -> int:
        return 1 if self.current == self.max_threads else self.max_threads

    def _decide(self) -> None:
        many, one = self._times.get(self.max_threads), self._times.get(1)
        if not many or not one:
            return
        many_s, one_s = sorted(many)[len(many) // 2], sorted(one)[len(one) // 2]
        self.current = self.max_threads if many_s * (1 + self.margin) < one_s else 1
