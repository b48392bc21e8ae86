"""Re-encode a video dataset for fast clip loading: the same relative paths, frame counts and fps,
H.264 with the short side resized and a keyframe every N frames (see softpool3d.datasets.prepare).

    python tools/prepare_videos.py SRC DST [--short-side 320] [--keyframe-interval 32] [--workers N]

A second run skips the videos already converted; files that cannot be converted are named and
listed in DST/failed.txt. Exit status 1 when some failed.
"""
import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="folder of source videos (searched recursively)")
    parser.add_argument("dst", help="output folder; gets the same relative paths")
    parser.add_argument("--short-side", type=int, default=None, help="pixels, never enlarged (default: 320)")
    parser.add_argument("--keyframe-interval", type=int, default=None, help="frames (default: 32)")
    parser.add_argument("--crf", type=int, default=None, help="x264 constant rate factor, quality (default: 23)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU; 0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from softpool3d.datasets.prepare import FAILED_LIST, prepare_videos

    given = {"short_side": args.short_side, "keyframe_interval": args.keyframe_interval, "crf": args.crf}
    try:
        summary = prepare_videos(args.src, args.dst, workers=args.workers,
                                 **{key: value for key, value in given.items() if value is not None})
    except (FileNotFoundError, ValueError) as error:
        logging.error("prepare_videos: %s", error)
        return 2
    logging.info("%s", summary.describe())
    if summary.failed:
        logging.info("failed videos are listed in %s/%s", args.dst, FAILED_LIST)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
