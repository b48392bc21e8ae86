"""softpool3d-predict --runtime onnx vs eager, videos/s side by side in one run; the logic is
:mod:`softpool3d.benchmarks.runtime`.

    python tools/bench_runtime.py [--model x3d_s] [--frames 13] [--crop 160] [--videos 8] [--rounds 3]
"""
import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="x3d_s")
    parser.add_argument("--frames", type=int, default=13, help="frames a clip (default: x3d_s's 13)")
    parser.add_argument("--crop", type=int, default=160, help="crop size (default: x3d_s's 160)")
    parser.add_argument("--videos", type=int, default=8, help="demo videos predicted each round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per runtime (after a warm-up)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from softpool3d.benchmarks.runtime import runtime_speed

    print(runtime_speed(args.model, (args.frames, args.crop), args.videos, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
