"""Prepare a video dataset for fast clip loading, in one of two forms (see softpool3d.datasets.prepare
and softpool3d.datasets.prepare_shards):

- ``--format video`` (default): the same relative paths, frame counts and fps, H.264 with the short
  side resized and a keyframe every N frames;
- ``--format shards``: every video's frames as JPEG (short side resized, every k-th frame with
  ``--frame-step k``) in tar shards with an index, and the dataset's annotation lists, for
  ``data.format=shards``.

    python tools/prepare_videos.py SRC DST [--short-side 320] [--keyframe-interval 32] [--workers N]
    python tools/prepare_videos.py SRC DST --format shards --dataset ucf101 [--short-side 182] [--quality 90]
        [--frame-step 1] [--shard-size-mb 1024]

A second run skips the videos already converted; files that cannot be converted are named and
listed in DST/failed.txt. Exit status 1 when some failed.
"""
import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="folder of source videos (searched recursively)")
    parser.add_argument("dst", help="output folder; gets the same relative paths (video) or shards and an index")
    parser.add_argument("--format", choices=("video", "shards"), default="video", help="output form (default: video)")
    parser.add_argument("--short-side", type=int, default=None, help="pixels, never enlarged (default: 320)")
    parser.add_argument("--keyframe-interval", type=int, default=None, help="video: frames (default: 32)")
    parser.add_argument("--crf", type=int, default=None, help="video: x264 constant rate factor, quality (default: 23)")
    parser.add_argument("--dataset", default=None, help="shards: the dataset's layout (kinetics700, ucf101, hmdb51, custom)")
    parser.add_argument("--annotations", default=None, help="shards: where the annotation lists are (default: the usual place)")
    parser.add_argument("--quality", type=int, default=None, help="shards: JPEG quality 1-100 (default: 90)")
    parser.add_argument("--frame-step", type=int, default=None,
                        help="shards: keep every k-th frame; k must divide the recipes' sampling_rate (default: 1)")
    parser.add_argument("--shard-size-mb", type=float, default=None, help="shards: bytes per shard, in MB (default: 1024)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU; 0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from softpool3d.datasets.prepare import FAILED_LIST, prepare_videos
    from softpool3d.datasets.prepare_shards import prepare_shards

    if args.format == "shards":
        if args.dataset is None:
            parser.error("--format shards needs --dataset (the layout whose annotation lists the shards keep)")
        given = {"short_side": args.short_side, "quality": args.quality, "frame_step": args.frame_step,
                 "shard_size": None if args.shard_size_mb is None else int(args.shard_size_mb * 1e6)}
        prepare, fixed = prepare_shards, {"dataset": args.dataset, "annotations": args.annotations}
    else:
        given = {"short_side": args.short_side, "keyframe_interval": args.keyframe_interval, "crf": args.crf}
        prepare, fixed = prepare_videos, {}
    try:
        summary = prepare(args.src, args.dst, workers=args.workers, **fixed,
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
