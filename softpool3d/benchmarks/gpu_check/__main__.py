"""``python -m softpool3d.benchmarks.gpu_check``: the GPU check (``tools/gpu_check.py``), and the
child process of each of its steps."""
import sys

from softpool3d.benchmarks.gpu_check.orchestrate import main

sys.exit(main())
