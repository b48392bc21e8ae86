"""Inference speed: PyTorch eager vs torch.compile vs onnxruntime (CPU) at the recipes' clip shapes, and
softpool3d-predict's videos/s; the logic is :mod:`softpool3d.benchmarks.inference`.

    python tools/bench_inference.py [--models r3d_18 x3d_s srtg_r3d_34] [--batches 1 8] [--repeats 3]
"""
import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["r3d_18", "x3d_s", "srtg_r3d_34"],
                        help="models of the backends table (none: only the predict table)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per backend (after warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers of the predict benchmark")
    parser.add_argument("--skip-predict", action="store_true", help="only the backends table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from softpool3d.benchmarks.inference import run

    print(run(args.models, args.batches, args.repeats, args.threads, args.workers, args.skip_predict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
