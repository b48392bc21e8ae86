"""A live sender: encodes a video's frames with PyAV (H.264, a keyframe every 5 frames, zero-latency
tuning) and sends them as MPEG-TS to a URL at the video's frame rate, as a camera or an encoder box
would. Used by the stream benchmark and tests to serve a real stream on 127.0.0.1.

    python -m softpool3d.benchmarks.stream_sender udp://127.0.0.1:PORT?pkt_size=1316 VIDEO [DELAY_SECONDS]

It prints ``ready`` once the video is decoded, then waits ``DELAY_SECONDS`` before sending.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional

import av


def send(url: str, video: str, delay: float = 0.0, on_ready: Optional[Callable[[], None]] = None) -> None:
    """Decode ``video``, call ``on_ready``, wait ``delay`` seconds, then send its frames to ``url`` (MPEG-TS)
    at its frame rate."""
    with av.open(video) as source:
        frames = [frame.to_ndarray(format="rgb24") for frame in source.decode(video=0)]
        rate = source.streams.video[0].average_rate or 25
    if on_ready is not None:
        on_ready()
    time.sleep(delay)
    with av.open(url, "w", format="mpegts") as target:
        stream = target.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.gop_size = 5
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "18"}
        start = time.monotonic()
        for index, pixels in enumerate(frames):
            wait = start + index / float(rate) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            target.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        target.mux(stream.encode())


if __name__ == "__main__":
    send(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0,
         on_ready=lambda: print("ready", flush=True))
