"""Preemption signals: SIGUSR1 (SLURM's --signal before the time limit) and SIGTERM (scancel, node drain).

Kept free of torch so an entry point can install the flag before its slow imports: a signal that lands
while the model is still being built is then honoured at the first step boundary instead of killing the
rank with the default action.
"""

import logging
import signal

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGUSR1/SIGTERM after saving; requeue and resume
PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionFlag:
    """Set by SIGUSR1/SIGTERM; the loop finishes the step, saves and exits with EXIT_PREEMPTED."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def install(self) -> "PreemptionFlag":
        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        log.warning(
            "received %s: finishing this step, then saving and exiting with %d",
            signal.Signals(signum).name,
            EXIT_PREEMPTED,
        )

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def ignore_preemption_signals(_worker_id: int | None = None) -> None:
    """For helper processes (DataLoader workers): SLURM signals every process of a step, and a worker that
    died of SIGTERM would make the rank fail before it could save. The rank decides; workers end with it."""
    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
