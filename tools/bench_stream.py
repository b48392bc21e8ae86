"""softpool3d-predict --stream latency on a live UDP stream served on 127.0.0.1 with a model slower than
real time; the logic is :mod:`softpool3d.benchmarks.stream`.

    python tools/bench_stream.py [--seconds 60] [--model x3d_s] [--window 2] [--stride 0.5] [--runtime eager]
"""
import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the served stream")
    parser.add_argument("--model", default="x3d_s")
    parser.add_argument("--frames", type=int, default=13)
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--stride", type=float, default=0.5)
    parser.add_argument("--runtime", default="eager", choices=("eager", "onnx"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from softpool3d.benchmarks.stream import stream_latency

    print(stream_latency(args.seconds, args.model, (args.frames, args.crop), args.window, args.stride, args.runtime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
