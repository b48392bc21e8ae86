"""SRTG: removing the steps leaves the base network; the steps change it; the gates pass x on a failed cycle."""
import pytest
import torch

from softpool3d.models import build_model, load_pretrained
from softpool3d.models.resnet3d import ResNet3d
from softpool3d.models.srtg import SqueezeRecursion, SRTGResNet3d, cycle_consistent

BASES = {"srtg_r3d_34": "r3d_34", "srtg_r3d_50": "r3d_50", "srtg_r2plus1d_34": "r2plus1d_34"}


@pytest.mark.parametrize("name", sorted(BASES))
def test_srtg_false_builds_exactly_the_base_network(name):
    torch.manual_seed(0)
    srtg = build_model(name, 5, pool="soft", width=8)
    plain = build_model(name, 5, pool="soft", width=8, srtg=False)
    base = build_model(BASES[name], 5, pool="soft", width=8)
    assert type(plain) is ResNet3d and isinstance(srtg, SRTGResNet3d)
    assert plain.state_dict().keys() == base.state_dict().keys()
    report = load_pretrained(base, srtg.state_dict())
    assert not report.missing_keys
    assert report.unexpected_keys and all(k.startswith("recursions.") for k in report.unexpected_keys)
    plain.load_state_dict(srtg.state_dict(), strict=False)
    x = torch.randn(2, 3, 4, 32, 32)
    base.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), base(x), rtol=0, atol=0)


def test_bottleneck_srtg_steps_see_expanded_channels():
    model = build_model("srtg_r3d_50", 5, width=8)
    assert [stage[0].lstm.input_size for stage in model.recursions] == [32, 64, 128, 256]
    assert model.fc.in_features == 256


def test_srtg_steps_change_the_logits_of_the_same_weights():
    torch.manual_seed(0)
    srtg = build_model("srtg_r3d_34", 5, pool="soft", width=8, gates=False).eval()
    base = build_model("r3d_34", 5, pool="soft", width=8).eval()
    report = load_pretrained(srtg, base.state_dict())
    assert report.missing_keys and all(k.startswith("recursions.") for k in report.missing_keys)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert (srtg(x) - base(x)).abs().max() > 1e-4


def _reference_cycle(u, v):
    """float64 loop: soft nearest neighbour of each u_i in v, then hard nearest frame of u."""
    u, v = u.double(), v.double()
    ok = []
    for a, b in zip(u, v):
        back = []
        for i in range(a.shape[0]):
            weights = torch.softmax(-((a[i] - b) ** 2).sum(-1), 0)
            soft = (weights[:, None] * b).sum(0)
            back.append(int(((soft - a) ** 2).sum(-1).argmin()))
        ok.append(back == list(range(a.shape[0])))
    return torch.tensor(ok)


def test_cycle_consistency_matches_a_float64_loop():
    torch.manual_seed(0)
    u = torch.randn(6, 5, 4)
    v = torch.cat([u[:2] + 0.01 * torch.randn(2, 5, 4), u[2:4].flip(1), torch.randn(2, 5, 4) * 0.3])
    expected = _reference_cycle(u, v)
    assert expected[:2].all() and not expected[4:].all()
    torch.testing.assert_close(cycle_consistent(u, v), expected)


def _constant_state_recursion(channels, value):
    """A step whose LSTM outputs the same state at every frame: the cycle check fails for T > 1."""
    step = SqueezeRecursion(channels, "soft", gates=True)
    with torch.no_grad():
        for name, parameter in step.lstm.named_parameters():
            parameter.zero_()
            if name.startswith("bias_ih"):
                hidden = channels
                parameter[: 2 * hidden] = 10.0  # input and forget gates open
                parameter[2 * hidden : 3 * hidden] = value  # cell candidate -> tanh(value)
                parameter[3 * hidden :] = 10.0  # output gate open
    return step


def test_gate_passes_x_when_the_cycle_check_fails():
    torch.manual_seed(0)
    step = _constant_state_recursion(4, 0.5)
    x = torch.randn(2, 4, 3, 5, 5)
    assert torch.equal(step(x), x)
    step.gates = False
    assert not torch.allclose(step(x), x)


def test_gate_passes_x_times_h_when_the_cycle_holds():
    torch.manual_seed(0)
    step = _constant_state_recursion(4, 0.5)
    x = torch.randn(2, 4, 1, 5, 5)  # one frame: every cycle returns to it
    squeezed = step.squeeze(x).flatten(2).transpose(1, 2)
    states, _ = step.lstm(squeezed)
    with torch.no_grad():
        torch.testing.assert_close(step(x), x * states.transpose(1, 2)[..., None, None])
        assert not torch.allclose(step(x), x)


@pytest.mark.parametrize("gates", [True, False])
def test_lstm_and_gate_run_in_float32_under_bf16_autocast_and_the_output_keeps_bf16(monkeypatch, gates):
    from softpool3d.models import srtg

    torch.manual_seed(0)
    step = SqueezeRecursion(4, "soft", gates=gates)
    seen = {}
    step.lstm.register_forward_hook(lambda module, inputs, output: seen.update(
        lstm=(inputs[0].dtype, output[0].dtype, torch.is_autocast_enabled("cpu"))))
    real = srtg.cycle_consistent

    def spy(u, v):
        seen.setdefault("gate", []).append((u.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return real(u, v)

    monkeypatch.setattr(srtg, "cycle_consistent", spy)
    x = torch.randn(2, 4, 3, 5, 5).bfloat16()  # the activation dtype of a bf16-autocast network
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = step(x)
    assert out.dtype == torch.bfloat16
    assert seen["lstm"] == (torch.float32, torch.float32, False)
    assert seen.get("gate", []) == ([(torch.float32, torch.float32, False)] * 2 if gates else [])
    # the float32 reference: the same step on the float32 input, with x * h rounded to bf16 once
    with torch.no_grad():
        reference = step(x.float())
    torch.testing.assert_close(out.float(), reference, atol=0.02, rtol=0.02)
