"""Write the synthetic demo action set (UCF-101 layout, H.264 mp4) to a folder.

    python tools/make_demo_data.py [ROOT] [--videos-per-class 24] [--seed 0]
    python tools/make_demo_data.py data/demo_hard --videos-per-class 14 --test-per-class 8 --noise 40 --distractors 2
"""
import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default="data/demo", help="output folder (default: data/demo)")
    parser.add_argument("--videos-per-class", type=int, default=24)
    parser.add_argument("--test-per-class", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="frame height and width (even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=12.0, help="std of the per-pixel noise (harder: larger)")
    parser.add_argument("--distractors", type=int, default=0, help="nuisance shapes drifting behind the actor")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from softpool3d.datasets import make_demo_dataset

    make_demo_dataset(args.root, seed=args.seed, videos_per_class=args.videos_per_class,
                      test_per_class=args.test_per_class, num_frames=args.frames, size=args.size,
                      noise=args.noise, distractors=args.distractors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
