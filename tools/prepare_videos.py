"""Re-encode a video dataset for fast clip loading: the same relative paths, frame counts and fps,
H.264 with the short side resized and a keyframe every N frames (see softpool3d.datasets.prepare).

    python tools/prepare_videos.py SRC DST [--short-side 320] [--keyframe-interval 32] [--workers N]

A second run skips the videos already converted; files that cannot be converted are named and
listed in DST/failed.txt. Exit status 1 when some failed.
"""
import argparse
import logging
import sys

from softpool3d.datasets.prepare import (
    DEFAULT_CRF,
    DEFAULT_KEYFRAME_INTERVAL,
    DEFAULT_SHORT_SIDE,
    FAILED_LIST,
    prepare_videos,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="folder of source videos (searched recursively)")
    parser.add_argument("dst", help="output folder; gets the same relative paths")
    parser.add_argument("--short-side", type=int, default=DEFAULT_SHORT_SIDE, help="pixels (never enlarged)")
    parser.add_argument("--keyframe-interval", type=int, default=DEFAULT_KEYFRAME_INTERVAL, help="frames")
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF, help="x264 constant rate factor (quality)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU; 0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = prepare_videos(args.src, args.dst, short_side=args.short_side,
                                 keyframe_interval=args.keyframe_interval, crf=args.crf, workers=args.workers)
    except (FileNotFoundError, ValueError) as error:
        logging.error("prepare_videos: %s", error)
        return 2
    logging.info("%s", summary.describe())
    if summary.failed:
        logging.info("failed videos are listed in %s/%s", args.dst, FAILED_LIST)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
