"""Worker processes (datasets/workers.py): started by ``worker_context``, a worker does not inherit
the parent's PyAV state, whose scaler threads' locks deadlock a forked child (av 18 and av 19)."""
import av
import numpy as np

from softpool3d.datasets import worker_context

# The frame the parent converted; a forked child inherits it, a worker of worker_context imports this
# module afresh and gets None.
_parent_frame = None


def _convert_at_another_size() -> None:
    frame = _parent_frame or av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), dtype=np.uint8), format="rgb24")
    frame.reformat(32, 24, format="yuv420p")


def test_a_worker_converts_frames_after_the_parent_did(monkeypatch):
    """The parent converts a frame first (as writing or decoding a video with PyAV does), which
    gives the scaler a pool of slice threads. A forked child converting at another size then waits
    forever on a lock of those threads (av 19 for any frame, av 18 for one the parent used); a
    worker of ``worker_context`` finishes."""
    frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), dtype=np.uint8), format="rgb24")
    frame.reformat(64, 48, format="yuv420p")
    monkeypatch.setattr(f"{__name__}._parent_frame", frame)
    worker = worker_context().Process(target=_convert_at_another_size)
    worker.start()
    worker.join(timeout=60)
    hung = worker.is_alive()
    if hung:
        worker.kill()
        worker.join()
    assert not hung and worker.exitcode == 0, f"the worker {'hung' if hung else f'exited {worker.exitcode}'}"
