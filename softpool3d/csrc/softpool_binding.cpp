// Python binding: forward(x, kernel, stride, padding, ceil_mode, channels_last, per_element,
// force_int64=False), forward_lse(same arguments) -> (y, lse), backward(grad, x, y, kernel, stride,
// padding, ceil_mode, channels_last, per_element, force_int64=False, lse=None) and plan(x, kernel, stride, padding, ceil_mode, y=None,
// grad=None, force_int64=False); adaptive_forward, adaptive_backward and adaptive_plan take
// output_size (T, H, W) in place of kernel, stride, padding and ceil_mode (adaptive_forward_lse too).
// lse is each window's log-sum-exp in the accumulation type (float32, float64 for float64), which
// the per-index kernels (CUDA, per_element) store in the forward so that the gather backward of long
// windows reads it instead of running the whole forward again; the CPU's row kernels return an
// empty lse and ignore a given one. channels_last picks
// the memory format of the result; per_element makes the CPU run the CUDA kernels' per-index
// bodies (CUDA tensors always do); force_int64 turns off their int32 index fast path; plan reports
// what the per-index launch does (x, y and grad may be meta tensors). thread_coords and divide32 expose the index mapping and
// the fast division to tests.
// Device dispatch happens here; the autograd and torch.library registration live in ops.py.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <string>

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
  set_dividers(g);
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
    for (int64_t o = 0; o < g.out[d]; ++o)  // the longest window [floor(o in / out), ceil((o + 1) in / out))
      g.kernel[d] = std::max(g.kernel[d], ((o + 1) * g.in[d] + g.out[d] - 1) / g.out[d] - o * g.in[d] / g.out[d]);
    g.stride[d] = g.in[d] % g.out[d] == 0 ? g.kernel[d] : 1;  // see windows_disjoint
  }
  set_dividers(g);
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

// lse: where to store the per-window log-sum-exp, or nullptr.
at::Tensor run_forward(const at::Tensor& x, const Geometry& g, bool channels_last, bool per_element,
                       bool force_int64, at::Tensor* lse = nullptr) {
  const at::MemoryFormat fmt = memory_format(channels_last);
  if (x.is_cuda()) {
#ifdef SOFTPOOL_WITH_CUDA
    return forward_cuda(x, g, fmt, force_int64, lse);
#else
    TORCH_CHECK(false, "softpool: this build of the extension has no CUDA kernels");
#endif
  }
  if (per_element) return forward_per_element_cpu(x, g, fmt, force_int64, lse);
  if (lse != nullptr) *lse = at::empty({0}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  return forward_cpu(x, g, fmt);
}

std::tuple<at::Tensor, at::Tensor> run_forward_lse(const at::Tensor& x, const Geometry& g, bool channels_last,
                                                   bool per_element, bool force_int64) {
  at::Tensor lse;
  at::Tensor y = run_forward(x, g, channels_last, per_element, force_int64, &lse);
  return {y, lse};
}

// A saved log-sum-exp: undefined or empty (none saved), else of the output shape, x's device and
// the accumulation type.
at::Tensor checked_lse(const at::Tensor& x, const Geometry& g, const std::optional<at::Tensor>& lse) {
  if (!lse.has_value() || !lse->defined() || lse->numel() == 0) return at::Tensor();
  const std::vector<int64_t> sizes = {x.size(0), x.size(1), g.out[0], g.out[1], g.out[2]};
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(lse->sizes() == at::IntArrayRef(sizes) && lse->device() == x.device() && lse->scalar_type() == acc,
              "softpool: backward expected lse of the output shape ", at::IntArrayRef(sizes), ", dtype ", acc,
              " on ", x.device(), ", got ", lse->sizes(), " ", lse->scalar_type(), " on ", lse->device());
  return *lse;
}

at::Tensor run_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const Geometry& g,
                        bool channels_last, bool per_element, bool force_int64,
                        const std::optional<at::Tensor>& saved_lse) {
  const at::MemoryFormat fmt = memory_format(channels_last);
  check_output(x, g, y, "y");
  check_output(x, g, grad, "grad");
  const at::Tensor lse = checked_lse(x, g, saved_lse);
  if (x.is_cuda()) {
#ifdef SOFTPOOL_WITH_CUDA
    return backward_cuda(grad, x, y, g, fmt, force_int64, lse);
#else
    TORCH_CHECK(false, "softpool: this build of the extension has no CUDA kernels");
#endif
  }
  return per_element ? backward_per_element_cpu(grad, x, y, g, fmt, force_int64, lse)
                     : backward_cpu(grad, x, y, g, fmt);
}

pybind11::dict run_plan(const at::Tensor& x, const Geometry& g, const std::optional<at::Tensor>& y,
                        const std::optional<at::Tensor>& grad, bool force_int64) {
  TORCH_CHECK(y.has_value() == grad.has_value(), "softpool: plan takes both y and grad (backward) or neither");
  const Plan p = make_plan(x, g, y.value_or(at::Tensor()), grad.value_or(at::Tensor()), force_int64);
  pybind11::dict out;
  out["chunks"] = p.chunks;
  out["groups"] = p.groups;
  out["backward"] = p.gather ? "gather" : "disjoint";
  out["index_bits"] = p.index32 ? 32 : 64;
  out["channels_fastest"] = p.channels_fastest;
  return out;
}

// A launch that runs nothing: it records, for the first `limit` indices of each body launched,
// the coordinates (n, c, t, h, w, j) body.coord(i) gives (the element thread i works on).
struct RecordLaunch {
  std::map<std::string, at::Tensor>* records;
  int64_t limit;

  template <typename Body>
  void operator()(const Body& body, int64_t count) const {
    using index_t = typename Body::index_type;
    const int64_t n = std::min(count, limit);
    at::Tensor out = at::empty({n, 6}, at::kLong);
    auto a = out.accessor<int64_t, 2>();
    for (int64_t i = 0; i < n; ++i) {
      const Coord<index_t> c = body.coord(static_cast<index_t>(i));
      const int64_t values[6] = {c.n, c.c, c.t, c.h, c.w, c.j};
      for (int k = 0; k < 6; ++k) a[i][k] = values[k];
    }
    (*records)[Body::name] = out;
  }
};

// Thread coordinates of every body a per-index forward (or, when backward, backward) launch of x
// runs, for tests of the index mapping.
std::map<std::string, at::Tensor> thread_coords(const at::Tensor& x, std::vector<int64_t> kernel,
                                                std::vector<int64_t> stride, std::vector<int64_t> padding,
                                                bool ceil_mode, bool backward, bool force_int64, int64_t limit) {
  const Geometry g = make_geometry(x, kernel, stride, padding, ceil_mode);
  const at::MemoryFormat fmt = memory_format(x.size(1) > 1 && x.stride(1) == 1);
  std::map<std::string, at::Tensor> records;
  const RecordLaunch launch{&records, limit};
  if (!backward) {
    forward_per_index(launch, x, g, fmt, force_int64);
    return records;
  }
  const at::Tensor y = at::zeros({x.size(0), x.size(1), g.out[0], g.out[1], g.out[2]}, x.options().memory_format(fmt));
  backward_per_index(launch, y, x, y, g, fmt, force_int64);
  return records;
}

// n / d by the int32_t Divider of softpool_kernel.h, elementwise (int64 tensors of values in
// [0, 2^31) and [1, 2^31)), for tests of the fast division.
at::Tensor divide32(const at::Tensor& n, const at::Tensor& d) {
  TORCH_CHECK(n.sizes() == d.sizes() && n.scalar_type() == at::kLong && d.scalar_type() == at::kLong,
              "softpool: divide32 takes two int64 tensors of one shape");
  const at::Tensor nc = n.contiguous(), dc = d.contiguous();
  at::Tensor out = at::empty_like(nc);
  const int64_t* np = nc.const_data_ptr<int64_t>();
  const int64_t* dp = dc.const_data_ptr<int64_t>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < nc.numel(); ++i) {
    TORCH_CHECK(np[i] >= 0 && np[i] <= std::numeric_limits<int32_t>::max() && dp[i] >= 1 &&
                    dp[i] <= std::numeric_limits<int32_t>::max(),
                "softpool: divide32 operands out of range: ", np[i], " / ", dp[i]);
    op[i] = Divider<int32_t>(static_cast<int32_t>(dp[i])).div(static_cast<int32_t>(np[i]));
  }
  return out;
}

at::Tensor forward(const at::Tensor& x, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                   std::vector<int64_t> padding, bool ceil_mode, bool channels_last, bool per_element,
                   bool force_int64) {
  return run_forward(x, make_geometry(x, kernel, stride, padding, ceil_mode), channels_last, per_element, force_int64);
}

std::tuple<at::Tensor, at::Tensor> forward_lse(const at::Tensor& x, std::vector<int64_t> kernel,
                                               std::vector<int64_t> stride, std::vector<int64_t> padding,
                                               bool ceil_mode, bool channels_last, bool per_element,
                                               bool force_int64) {
  return run_forward_lse(x, make_geometry(x, kernel, stride, padding, ceil_mode), channels_last, per_element,
                         force_int64);
}

at::Tensor backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, std::vector<int64_t> kernel,
                    std::vector<int64_t> stride, std::vector<int64_t> padding, bool ceil_mode, bool channels_last,
                    bool per_element, bool force_int64, const std::optional<at::Tensor>& lse) {
  return run_backward(grad, x, y, make_geometry(x, kernel, stride, padding, ceil_mode), channels_last, per_element,
                      force_int64, lse);
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

std::tuple<at::Tensor, at::Tensor> adaptive_forward_lse(const at::Tensor& x, std::vector<int64_t> output_size,
                                                        bool channels_last, bool per_element, bool force_int64) {
  return run_forward_lse(x, make_adaptive_geometry(x, output_size), channels_last, per_element, force_int64);
}

at::Tensor adaptive_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                             std::vector<int64_t> output_size, bool channels_last, bool per_element, bool force_int64,
                             const std::optional<at::Tensor>& lse) {
  return run_backward(grad, x, y, make_adaptive_geometry(x, output_size), channels_last, per_element, force_int64,
                      lse);
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
  m.def("forward_lse", &softpool::forward_lse, "forward, and each window's log-sum-exp (empty on the CPU's row kernels)",
        py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("ceil_mode"),
        py::arg("channels_last"), py::arg("per_element"), py::arg("force_int64") = false);
  m.def("backward", &softpool::backward, "SoftPool 3-D backward from input and output", py::arg("grad"), py::arg("x"),
        py::arg("y"), py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("ceil_mode"),
        py::arg("channels_last"), py::arg("per_element"), py::arg("force_int64") = false, py::arg("lse") = py::none());
  m.def("plan", &softpool::plan, "What the per-index (CUDA) launch runs: chunks per window, backward kind, index bits",
        py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("ceil_mode"),
        py::arg("y") = py::none(), py::arg("grad") = py::none(), py::arg("force_int64") = false);
  m.def("thread_coords", &softpool::thread_coords,
        "Tests: the (n, c, t, h, w, j) each thread index of each per-index body works on", py::arg("x"),
        py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("ceil_mode"), py::arg("backward"),
        py::arg("force_int64") = false, py::arg("limit") = 4096);
  m.def("divide32", &softpool::divide32, "Tests: n / d by the int32 fast divider", py::arg("n"), py::arg("d"));
  m.def("adaptive_forward", &softpool::adaptive_forward, "Adaptive SoftPool 3-D forward on (N, C, T, H, W)",
        py::arg("x"), py::arg("output_size"), py::arg("channels_last"), py::arg("per_element"),
        py::arg("force_int64") = false);
  m.def("adaptive_forward_lse", &softpool::adaptive_forward_lse, "adaptive_forward, and each window's log-sum-exp",
        py::arg("x"), py::arg("output_size"), py::arg("channels_last"), py::arg("per_element"),
        py::arg("force_int64") = false);
  m.def("adaptive_backward", &softpool::adaptive_backward, "Adaptive SoftPool 3-D backward from input and output",
        py::arg("grad"), py::arg("x"), py::arg("y"), py::arg("output_size"), py::arg("channels_last"),
        py::arg("per_element"), py::arg("force_int64") = false, py::arg("lse") = py::none());
  m.def("adaptive_plan", &softpool::adaptive_plan, "plan() of adaptive SoftPool", py::arg("x"),
        py::arg("output_size"), py::arg("y") = py::none(), py::arg("grad") = py::none(),
        py::arg("force_int64") = false);
}
