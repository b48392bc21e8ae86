// Python binding: forward(x, kernel, stride, padding, ceil_mode, channels_last, per_element,
// force_int64=False), backward(grad, x, y, kernel, stride, padding, ceil_mode, channels_last,
// per_element, force_int64=False) and plan(x, kernel, stride, padding, ceil_mode, y=None,
// grad=None, force_int64=False); adaptive_forward, adaptive_backward and adaptive_plan take
// output_size (T, H, W) in place of kernel, stride, padding and ceil_mode. channels_last picks
// the memory format of the result; per_element makes the CPU run the CUDA kernels' per-index bodies (CUDA tensors always do);
// force_int64 turns off their int32 index fast path; plan reports what the per-index launch does
// (x, y and grad may be meta tensors).
// Device dispatch happens here; the autograd and torch.library registration live in ops.py.
#include <torch/extension.h>

#include <algorithm>
#include <optional>

#include "softpool_launch.h"

namespace softpool {

namespace {

// As avg_pool3d: a 5-D input whose non-batch dimensions are not empty (a window over no data has
// no value, and the kernels would read outside x).
void check_input(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 5, "softpool: expected a 5-D (N, C, T, H, W) input, got ", x.dim(), "-D");
  for (int d = 1; d < 5; ++d)
    TORCH_CHECK(x.size(d) > 0, "softpool: expected an input whose non-batch dimensions (C, T, H, W) have positive "
                "length, got shape ", x.sizes());
}

}  // namespace

Geometry make_geometry(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                       bool ceil_mode) {
  check_input(x);
  TORCH_CHECK(kernel.size() == 3 && stride.size() == 3 && padding.size() == 3,
              "softpool: kernel, stride and padding must have 3 entries");
  Geometry g;
  g.adaptive = false;
  for (int d = 0; d < 3; ++d) {
    g.in[d] = x.size(d + 2);
    g.kernel[d] = kernel[d];
    g.stride[d] = stride[d];
    g.pad[d] = padding[d];
    TORCH_CHECK(g.kernel[d] > 0 && g.stride[d] > 0 && g.pad[d] >= 0 && 2 * g.pad[d] <= g.kernel[d],
                "softpool: invalid kernel ", kernel, ", stride ", stride, " or padding ", padding);
    TORCH_CHECK(g.in[d] + 2 * g.pad[d] >= g.kernel[d], "softpool: kernel ", kernel, " larger than padded input ",
                x.sizes());
    const int64_t span = g.in[d] + 2 * g.pad[d] - g.kernel[d];
    int64_t out = (span + (ceil_mode ? g.stride[d] - 1 : 0)) / g.stride[d] + 1;
    if (ceil_mode && (out - 1) * g.stride[d] >= g.in[d] + g.pad[d]) --out;
    g.out[d] = out;
  }
  return g;
}

Geometry make_adaptive_geometry(const at::Tensor& x, at::IntArrayRef output_size) {
  check_input(x);
  TORCH_CHECK(output_size.size() == 3, "softpool: output_size must have 3 entries, got ", output_size);
  Geometry g;
  g.adaptive = true;
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(output_size[d] > 0, "softpool: output_size must be positive, got ", output_size);
    g.in[d] = x.size(d + 2);
    g.out[d] = output_size[d];
    g.pad[d] = 0;
    g.kernel[d] = 0;
    for (int64_t o = 0; o < g.out[d]; ++o) {
      int64_t begin, end;
      window_range(g, d, o, &begin, &end);
      g.kernel[d] = std::max(g.kernel[d], end - begin);
    }
    g.stride[d] = g.in[d] % g.out[d] == 0 ? g.kernel[d] : 1;  // see windows_disjoint
  }
  return g;
}

// Adaptive windows are disjoint, and tile the input, exactly where the input size divides by the
// output size (elsewhere neighbouring windows share an input, or one input has several windows).
bool adaptive_windows_tile(const Geometry& g) {
  for (int d = 0; d < 3; ++d)
    if (g.in[d] % g.out[d] != 0) return false;
  return true;
}

bool windows_disjoint(const Geometry& g) {
  if (g.adaptive) return adaptive_windows_tile(g);
  for (int d = 0; d < 3; ++d)
    if (g.stride[d] < g.kernel[d]) return false;
  return true;
}

bool windows_tile(const Geometry& g) {
  if (g.adaptive) return adaptive_windows_tile(g);
  for (int d = 0; d < 3; ++d)
    if (g.stride[d] != g.kernel[d] || g.pad[d] != 0 || g.out[d] * g.kernel[d] != g.in[d]) return false;
  return true;
}

// Refuses a saved output or output gradient t that is not of the output shape of x pooled by g,
// or not of x's dtype and device: the kernels index it with the output's geometry.
void check_output(const at::Tensor& x, const Geometry& g, const at::Tensor& t, const char* name) {
  const std::vector<int64_t> sizes = {x.size(0), x.size(1), g.out[0], g.out[1], g.out[2]};
  const at::IntArrayRef expected(sizes);
  TORCH_CHECK(t.sizes() == expected, "softpool: backward expected ", name, " of the output shape ", expected,
              " (input ", x.sizes(), "), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), "softpool: backward expected ", name, " on the input's device ", x.device(),
              ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "softpool: backward expected ", name, " of the input's dtype ",
              x.scalar_type(), ", got ", t.scalar_type());
}

at::MemoryFormat memory_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
}

at::Tensor run_forward(const at::Tensor& x, const Geometry& g, bool channels_last, bool per_element,
                       bool force_int64) {
  const at::MemoryFormat fmt = memory_format(channels_last);
  if (x.is_cuda()) {
#ifdef SOFTPOOL_WITH_CUDA
    return forward_cuda(x, g, fmt, force_int64);
#else
    TORCH_CHECK(false, "softpool: this build of the extension has no CUDA kernels");
#endif
  }
  return per_element ? forward_per_element_cpu(x, g, fmt, force_int64) : forward_cpu(x, g, fmt);
}

at::Tensor run_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const Geometry& g,
                        bool channels_last, bool per_element, bool force_int64) {
  const at::MemoryFormat fmt = memory_format(channels_last);
  check_output(x, g, y, "y");
  check_output(x, g, grad, "grad");
  if (x.is_cuda()) {
#ifdef SOFTPOOL_WITH_CUDA
    return backward_cuda(grad, x, y, g, fmt, force_int64);
#else
    TORCH_CHECK(false, "softpool: this build of the extension has no CUDA kernels");
#endif
  }
  return per_element ? backward_per_element_cpu(grad, x, y, g, fmt, force_int64) : backward_cpu(grad, x, y, g, fmt);
}

pybind11::dict run_plan(const at::Tensor& x, const Geometry& g, const std::optional<at::Tensor>& y,
                        const std::optional<at::Tensor>& grad, bool force_int64) {
  TORCH_CHECK(y.has_value() == grad.has_value(), "softpool: plan takes both y and grad (backward) or neither");
  const Plan p = make_plan(x, g, y.value_or(at::Tensor()), grad.value_or(at::Tensor()), force_int64);
  pybind11::dict out;
  out["chunks"] = p.chunks;
  out["backward"] = p.gather ? "gather" : "disjoint";
  out["index_bits"] = p.index32 ? 32 : 64;
  return out;
}

at::Tensor forward(const at::Tensor& x, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                   std::vector<int64_t> padding, bool ceil_mode, bool channels_last, bool per_element,
                   bool force_int64) {
  return run_forward(x, make_geometry(x, kernel, stride, padding, ceil_mode), channels_last, per_element, force_int64);
}

at::Tensor backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, std::vector<int64_t> kernel,
                    std::vector<int64_t> stride, std::vector<int64_t> padding, bool ceil_mode, bool channels_last,
                    bool per_element, bool force_int64) {
  return run_backward(grad, x, y, make_geometry(x, kernel, stride, padding, ceil_mode), channels_last, per_element,
                      force_int64);
}

pybind11::dict plan(const at::Tensor& x, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                    std::vector<int64_t> padding, bool ceil_mode, const std::optional<at::Tensor>& y,
                    const std::optional<at::Tensor>& grad, bool force_int64) {
  return run_plan(x, make_geometry(x, kernel, stride, padding, ceil_mode), y, grad, force_int64);
}

at::Tensor adaptive_forward(const at::Tensor& x, std::vector<int64_t> output_size, bool channels_last,
                            bool per_element, bool force_int64) {
  return run_forward(x, make_adaptive_geometry(x, output_size), channels_last, per_element, force_int64);
}

at::Tensor adaptive_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                             std::vector<int64_t> output_size, bool channels_last, bool per_element, bool force_int64) {
  return run_backward(grad, x, y, make_adaptive_geometry(x, output_size), channels_last, per_element, force_int64);
}

pybind11::dict adaptive_plan(const at::Tensor& x, std::vector<int64_t> output_size, const std::optional<at::Tensor>& y,
                             const std::optional<at::Tensor>& grad, bool force_int64) {
  return run_plan(x, make_adaptive_geometry(x, output_size), y, grad, force_int64);
}

}  // namespace softpool

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("forward", &softpool::forward, "SoftPool 3-D forward on (N, C, T, H, W)", py::arg("x"), py::arg("kernel"),
        py::arg("stride"), py::arg("padding"), py::arg("ceil_mode"), py::arg("channels_last"), py::arg("per_element"),
        py::arg("force_int64") = false);
  m.def("backward", &softpool::backward, "SoftPool 3-D backward from input and output", py::arg("grad"), py::arg("x"),
        py::arg("y"), py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("ceil_mode"),
        py::arg("channels_last"), py::arg("per_element"), py::arg("force_int64") = false);
  m.def("plan", &softpool::plan, "What the per-index (CUDA) launch runs: chunks per window, backward kind, index bits",
        py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("ceil_mode"),
        py::arg("y") = py::none(), py::arg("grad") = py::none(), py::arg("force_int64") = false);
  m.def("adaptive_forward", &softpool::adaptive_forward, "Adaptive SoftPool 3-D forward on (N, C, T, H, W)",
        py::arg("x"), py::arg("output_size"), py::arg("channels_last"), py::arg("per_element"),
        py::arg("force_int64") = false);
  m.def("adaptive_backward", &softpool::adaptive_backward, "Adaptive SoftPool 3-D backward from input and output",
        py::arg("grad"), py::arg("x"), py::arg("y"), py::arg("output_size"), py::arg("channels_last"),
        py::arg("per_element"), py::arg("force_int64") = false);
  m.def("adaptive_plan", &softpool::adaptive_plan, "plan() of adaptive SoftPool", py::arg("x"),
        py::arg("output_size"), py::arg("y") = py::none(), py::arg("grad") = py::none(),
        py::arg("force_int64") = false);
}
