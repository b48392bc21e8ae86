"""The GPU validation as one prepared command: every GPU check in order, each in its own process
group under its own time cap, with progress and partial results streamed as it goes.

    bash tools/gpu_wheels.sh                                   # here, once: .whl/ and .gpu_data/
    python tools/gpu_check.py --dry-run --out /tmp/gpu_dry     # here: the same steps on the CPU
    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 tools/gpu_check.py --out $OUT   # there (docs/gpu.md)

Steps, the headline figures first: ``environment`` (preflight of Python.h, ninja, CUDA_HOME, nvcc
and compute-sanitizer; GPU, driver, versions, copy bandwidth; the CUDA and CPU builds of the
extension with every core, ``TORCH_CUDA_ARCH_LIST`` pinned to the GPU), ``bench_op`` (the op against
avg/max pooling and the 5-op formula, timed by CUDA events over many calls, float32 and bf16,
contiguous and channels_last_3d, X3D-S's squeeze-excitation pools first; rows written as they are
measured), ``pytest_cuda`` (``pytest -m cuda``), ``train_steps`` (x3d_s and r3d_18, bf16,
channels_last_3d, eager, then ``torch.compile`` while the cap allows), ``sanitizer``
(compute-sanitizer memcheck and initcheck without the caching allocator), ``loader``,
``shard_decode`` (the carried frame shards decoded on the GPU against x3d_s's training step), ``ddp``
(torchrun over NCCL) and ``authors_kernel`` (with ``--authors-kernel``; reported skipped otherwise).

A step that reports the kernel requires the compiled extension and says ``NOT OK: no compiled
extension`` without it, never a figure of the pure-PyTorch path. Whatever ends a step (its cap,
SIGTERM or SIGINT, the check's own death) ends every process it started (:mod:`.processes`); a
step killed or interrupted keeps the partial results it wrote. Results go to ``--out``:
``gpu_check.json`` and ``gpu_check.md`` (:mod:`.report`), rewritten after every step, and
``gpu_check.log``. ``--dry-run`` runs every step on the CPU with tiny shapes and checks the carried
wheels against Python 3.12 (``tools/gpu_deploy/``).

Modules: :mod:`.orchestrate` (order, caps, the command), :mod:`.processes` (process groups, kills,
signals), :mod:`.context` (what a step sees), :mod:`.kernel_steps`, :mod:`.training_steps` and
:mod:`.report`.
"""
