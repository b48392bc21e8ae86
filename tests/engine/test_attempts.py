"""The attempt number that every rank of a torchrun job agrees on, over a real TCP store that keeps
the keys of earlier attempts (as torchrun's agent store does), with ranks joining in any order."""
import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from softpool3d.engine.processes.attempts import agree_on_attempt

TIMEOUT = timedelta(seconds=20)


@pytest.fixture()
def store():
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    return lambda: dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=TIMEOUT)


def _attempt(store, world_size, delays):
    """Every rank's answer, rank ``r`` joining after ``delays[r]`` seconds."""
    answers = {}

    def join(rank):
        time.sleep(delays[rank])
        answers[rank] = agree_on_attempt(store(), rank, world_size, TIMEOUT)

    threads = [threading.Thread(target=join, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [answers.get(rank) for rank in range(world_size)]


def test_every_rank_agrees_on_each_attempt_whatever_the_earlier_attempts_left_in_the_store(store):
    assert _attempt(store, 3, [0, 0, 0]) == [0, 0, 0]
    assert _attempt(store, 3, [0.3, 0, 0.1]) == [1, 1, 1]  # ranks 1 and 2 find attempt 0's answers first
    assert _attempt(store, 3, [0, 0.3, 0]) == [2, 2, 2]  # rank 0 finds attempt 1's greetings first


def test_a_rank_that_never_joins_is_named_after_the_timeout(store):
    with pytest.raises(RuntimeError, match=r"ranks \[1\] did not join the job's store for attempt 0"):
        agree_on_attempt(store(), 0, 2, timedelta(seconds=0.5))
