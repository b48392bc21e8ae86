"""The pieces of preemption in one process: the watch records SIGTERM, SIGINT and SIGUSR1 instead of
dying of them and puts the previous handlers back; the stop flag travels in the step's reduction."""
import os
import signal

import pytest
import torch

from softpool3d.engine.processes.preemption import PREEMPTION_SIGNALS, PreemptionWatch
from softpool3d.engine.training.step_stats import reduce_step


@pytest.mark.parametrize("number", PREEMPTION_SIGNALS, ids=lambda number: signal.Signals(number).name)
def test_the_watch_records_the_signal_and_restores_the_handlers(number):
    before = signal.getsignal(number)
    with PreemptionWatch() as watch:
        assert not watch.requested and not watch.agreed(torch.device("cpu"))
        os.kill(os.getpid(), number)  # would end this process without the watch
        assert watch.requested and watch.signal_name == signal.Signals(number).name
        assert watch.agreed(torch.device("cpu"))
    assert signal.getsignal(number) is before


def test_a_second_sigint_stops_at_once():
    with PreemptionWatch():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("stop", [False, True])
def test_the_stop_flag_travels_in_the_step_reduction(stop):
    summary = reduce_step(torch.tensor(2.0), torch.tensor(3.0), True, torch.tensor(0), 1, torch.device("cpu"),
                          stop=stop)
    assert (summary.loss, summary.grad_norm, summary.problems, summary.stop) == (2.0, 3.0, [], stop)
