// Python binding: forward(x, kernel, stride, padding, ceil_mode, channels_last, per_element) and
// backward(grad, x, y, kernel, stride, padding, ceil_mode, channels_last, per_element);
// channels_last picks the memory format of the result; per_element makes the CPU run the CUDA
// kernel's per-element scheme (CUDA tensors always do).
// Device dispatch happens here; the autograd and torch.library registration live in ops.py.
#include <torch/extension.h>

#include "softpool_ops.h"

namespace softpool {

Geometry make_geometry(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                       bool ceil_mode) {
  TORCH_CHECK(x.dim() == 5, "softpool: expected a 5-D (N, C, T, H, W) input, got ", x.dim(), "-D");
  TORCH_CHECK(kernel.size() == 3 && stride.size() == 3 && padding.size() == 3,
              "softpool: kernel, stride and padding must have 3 entries");
  Geometry g;
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

bool windows_disjoint(const Geometry& g) {
  for (int d = 0; d < 3; ++d)
    if (g.stride[d] < g.kernel[d]) return false;
  return true;
}

bool windows_tile(const Geometry& g) {
  for (int d = 0; d < 3; ++d)
    if (g.stride[d] != g.kernel[d] || g.pad[d] != 0 || g.out[d] * g.kernel[d] != g.in[d]) return false;
  return true;
}

at::Tensor forward(const at::Tensor& x, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                   std::vector<int64_t> padding, bool ceil_mode, bool channels_last, bool per_element) {
  const Geometry g = make_geometry(x, kernel, stride, padding, ceil_mode);
  const at::MemoryFormat fmt = channels_last ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
  if (x.is_cuda()) {
#ifdef SOFTPOOL_WITH_CUDA
    return forward_cuda(x, g, fmt);
#else
    TORCH_CHECK(false, "softpool: this build of the extension has no CUDA kernels");
#endif
  }
  return forward_cpu(x, g, fmt, per_element);
}

at::Tensor backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, std::vector<int64_t> kernel,
                    std::vector<int64_t> stride, std::vector<int64_t> padding, bool ceil_mode, bool channels_last,
                    bool per_element) {
  const Geometry g = make_geometry(x, kernel, stride, padding, ceil_mode);
  const at::MemoryFormat fmt = channels_last ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
  TORCH_CHECK(grad.sizes() == y.sizes(), "softpool: grad shape ", grad.sizes(), " differs from output ", y.sizes());
  if (x.is_cuda()) {
#ifdef SOFTPOOL_WITH_CUDA
    return backward_cuda(grad, x, y, g, fmt);
#else
    TORCH_CHECK(false, "softpool: this build of the extension has no CUDA kernels");
#endif
  }
  return backward_cpu(grad, x, y, g, fmt, per_element);
}

}  // namespace softpool

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &softpool::forward, "SoftPool 3-D forward on (N, C, T, H, W)");
  m.def("backward", &softpool::backward, "SoftPool 3-D backward from input and output");
}
