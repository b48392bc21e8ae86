"""Calls that used to crash the process (a window over no data, a saved output or gradient of the
wrong shape, dtype or device) raise clear errors instead, in the fused CPU kernel and in
``per_element`` mode (the CUDA kernels' bodies, behind the same checks in the binding). The calls
run in a subprocess, so that a regression fails the test instead of killing pytest."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from softpool3d import extension

SCRIPT = r"""
import json, sys, torch
import softpool3d
from softpool3d import extension

module = extension.for_device(torch.device("cpu"))
per_element = sys.argv[1] == "per_element"
pool = ([2, 2, 2], [2, 2, 2], [0, 0, 0], False, False, per_element)
x = torch.randn(1, 2, 4, 6, 6)
y = module.forward(x, *pool)
empty = torch.empty(1, 1, 0, 3, 3)
issue = ([2, 1, 1], [1, 1, 1], [1, 0, 0], False, False, per_element)
CASES = {
    "soft_pool3d_zero_time": lambda: softpool3d.soft_pool3d(empty, (2, 1, 1), (1, 1, 1), (1, 0, 0)),
    "soft_pool2d_zero_channels": lambda: softpool3d.soft_pool2d(torch.empty(2, 0, 4, 4), 2),
    "forward_zero_time": lambda: module.forward(empty, *issue),
    "forward_zero_channels": lambda: module.forward(torch.empty(1, 0, 4, 6, 6), *pool),
    "backward_zero_time": lambda: module.backward(torch.ones(1, 1, 1, 3, 3), empty, torch.ones(1, 1, 1, 3, 3), *issue),
    "backward_small_y": lambda: module.backward(y, x, y[:, :, :1, :1, :1], *pool),
    "backward_small_grad": lambda: module.backward(y[:, :1], x, y, *pool),
    "backward_y_on_meta": lambda: module.backward(y, x, torch.empty(y.shape, device="meta"), *pool),
    "backward_y_double": lambda: module.backward(y, x, y.double(), *pool),
    "torch_ops_small_y": lambda: torch.ops.softpool3d.soft_pool3d_backward(y, x, y[:, :, :1], torch.empty(0),
                                                                             *pool[:4]),
    "empty_batch": lambda: [tuple(module.forward(torch.empty(0, 2, 4, 6, 6), *pool).shape),
                            tuple(module.backward(torch.empty(0, 2, 2, 3, 3), torch.empty(0, 2, 4, 6, 6),
                                                  torch.empty(0, 2, 2, 3, 3), *pool).shape)],
}
for name, call in CASES.items():
    print(json.dumps({"start": name}), flush=True)
    try:
        result = {"name": name, "value": call()}
    except Exception as error:
        result = {"name": name, "error": type(error).__name__, "message": str(error).splitlines()[0]}
    print(json.dumps(result), flush=True)
"""

# case -> (exception type, text its message must contain), or the returned value
EXPECTED = {
    "soft_pool3d_zero_time": ("ValueError", "non-batch dimensions of positive length"),
    "soft_pool2d_zero_channels": ("ValueError", "non-batch dimensions of positive length"),
    "forward_zero_time": ("RuntimeError", "non-batch dimensions (C, T, H, W) have positive length"),
    "forward_zero_channels": ("RuntimeError", "non-batch dimensions (C, T, H, W) have positive length"),
    "backward_zero_time": ("RuntimeError", "non-batch dimensions (C, T, H, W) have positive length"),
    "backward_small_y": ("RuntimeError", "expected y of the output shape [1, 2, 2, 3, 3]"),
    "backward_small_grad": ("RuntimeError", "expected grad of the output shape [1, 2, 2, 3, 3]"),
    "backward_y_on_meta": ("RuntimeError", "expected y on the input's device cpu"),
    "backward_y_double": ("RuntimeError", "expected y of the input's dtype Float"),
    "torch_ops_small_y": ("RuntimeError", "expected y of the output shape"),
    "empty_batch": [[0, 2, 2, 3, 3], [0, 2, 4, 6, 6]],
}


@pytest.fixture(scope="module", autouse=True)
def built():
    """Build the extension here, so that the subprocesses only load it."""
    assert extension.for_device(torch.device("cpu")) is not None


@pytest.mark.parametrize("mode", ["fused", "per_element"])
def test_bad_shapes_raise_instead_of_crashing(mode):
    process = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    results = {line["name"]: line for line in lines if "name" in line}
    started = [line["start"] for line in lines if "start" in line]
    assert process.returncode == 0, f"the process died (code {process.returncode}) in {started[-1:]}:\n{process.stderr}"
    assert set(results) == set(EXPECTED)
    for name, expected in EXPECTED.items():
        result = results[name]
        if isinstance(expected, list):
            assert result.get("value") == expected, (name, result)
        else:
            assert (result.get("error"), expected[1] in result.get("message", "")) == (expected[0], True), (name, result)
