"""torch.compile on the CPU, one network per family, against eager: a module of its own, so that
pytest-xdist (which keeps a module in one process) runs these minutes of compiling beside the other
model tests rather than after them."""
import pytest
import torch
from test_models_common import _tiny


def _shallow(family):
    """One network per family (ResNet, X3D, SRTG) at a CPU-compile size: r3d_18 at width 8 as
    registered; X3D (width factor 2.0 as every X3D) and SRTG(2+1)D (width 4) with one or two blocks a
    stage, so each kind of block (strided or not; X3D's with and without squeeze-excitation) is there
    once, a quarter of their registered networks' graphs to compile."""
    if family == "resnet":
        return _tiny("r3d_18")
    if family == "x3d":
        from pytorchvideo.models.x3d import create_x3d
        from softpool3d.models.x3d import X3D

        net = create_x3d(input_clip_length=4, input_crop_size=32, model_num_class=5, dropout_rate=0.0,
                         width_factor=2.0, depth_factor=0.4, head_activation=None)  # stage depths 1, 1, 2, 2
        return X3D(net, "soft")
    from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D
    from softpool3d.models.srtg import _srtg

    return _srtg(BasicBlock, Conv2Plus1D, [1, 1, 1, 1], True, 5, "soft", width=4)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["resnet", "x3d", "srtg"])
def test_torch_compile_on_cpu_matches_eager(family):
    """One compile per family (of the training graph: forward and backward) serves both checks: the
    output equals eager's and the gradient reaches every parameter. Compiling takes tens of seconds."""
    torch.manual_seed(0)
    model = _shallow(family).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    compiled = torch.compile(model)
    out = compiled(x)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
