// CUDA launcher: one thread per output element (forward, disjoint backward, log-sum-exp) or per
// input element (gather backward), each running the shared arithmetic of softpool_kernel.h.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "softpool_ops.h"

namespace softpool {
namespace {

constexpr int kThreads = 256;

struct Strides {
  int64_t s[5];
};

Strides strides_of(const at::Tensor& t) {
  Strides out;
  for (int d = 0; d < 5; ++d) out.s[d] = t.stride(d);
  return out;
}

// Splits a linear index over (N, C, D0, D1, D2) into its coordinates.
struct Index5 {
  int64_t n, c, a, b, d;
};

__device__ __forceinline__ Index5 unravel(int64_t i, int64_t channels, const int64_t* dims) {
  Index5 out;
  out.d = i % dims[2];
  i /= dims[2];
  out.b = i % dims[1];
  i /= dims[1];
  out.a = i % dims[0];
  i /= dims[0];
  out.c = i % channels;
  out.n = i / channels;
  return out;
}

unsigned blocks_for(int64_t count) { return static_cast<unsigned>((count + kThreads - 1) / kThreads); }

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, acc_t* __restrict__ lse,
                               Geometry g, int64_t channels, int64_t count, Strides xs, Strides ys) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const Index5 o = unravel(i, channels, g.out);
  const scalar_t* plane = x + o.n * xs.s[0] + o.c * xs.s[1];
  acc_t l;
  const acc_t out = window_forward<scalar_t, acc_t>(plane, xs.s[2], xs.s[3], xs.s[4], output_window(g, o.a, o.b, o.d), &l);
  if (y != nullptr) y[o.n * ys.s[0] + o.c * ys.s[1] + o.a * ys.s[2] + o.b * ys.s[3] + o.d * ys.s[4]] = static_cast<scalar_t>(out);
  if (lse != nullptr) lse[i] = l;
}

template <typename scalar_t, typename acc_t>
__global__ void disjoint_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                         const scalar_t* __restrict__ y, scalar_t* __restrict__ dx, Geometry g,
                                         int64_t channels, int64_t count, Strides gs, Strides xs, Strides ys,
                                         Strides ds) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const Index5 o = unravel(i, channels, g.out);
  const acc_t yv = static_cast<acc_t>(y[o.n * ys.s[0] + o.c * ys.s[1] + o.a * ys.s[2] + o.b * ys.s[3] + o.d * ys.s[4]]);
  const acc_t gv = static_cast<acc_t>(grad[o.n * gs.s[0] + o.c * gs.s[1] + o.a * gs.s[2] + o.b * gs.s[3] + o.d * gs.s[4]]);
  window_backward<scalar_t, acc_t, scalar_t>(x + o.n * xs.s[0] + o.c * xs.s[1], xs.s[2], xs.s[3], xs.s[4],
                                             dx + o.n * ds.s[0] + o.c * ds.s[1], ds.s[2], ds.s[3], ds.s[4],
                                             output_window(g, o.a, o.b, o.d), yv, gv, false);
}

template <typename scalar_t, typename acc_t>
__global__ void gather_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                       const scalar_t* __restrict__ y, const acc_t* __restrict__ lse,
                                       scalar_t* __restrict__ dx, Geometry g, int64_t channels, int64_t count,
                                       Strides gs, Strides xs, Strides ys, Strides ls, Strides ds) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const Index5 p = unravel(i, channels, g.in);
  const acc_t xi = static_cast<acc_t>(x[p.n * xs.s[0] + p.c * xs.s[1] + p.a * xs.s[2] + p.b * xs.s[3] + p.d * xs.s[4]]);
  const acc_t out = input_backward<scalar_t, acc_t>(g, xi, p.a, p.b, p.d, lse + p.n * ls.s[0] + p.c * ls.s[1],
                                                    y + p.n * ys.s[0] + p.c * ys.s[1],
                                                    grad + p.n * gs.s[0] + p.c * gs.s[1], ls.s + 2, ys.s + 2, gs.s + 2);
  dx[p.n * ds.s[0] + p.c * ds.s[1] + p.a * ds.s[2] + p.b * ds.s[3] + p.d * ds.s[4]] = static_cast<scalar_t>(out);
}

}  // namespace

at::Tensor forward_cuda(const at::Tensor& x, const Geometry& g, at::MemoryFormat fmt) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({x.size(0), x.size(1), g.out[0], g.out[1], g.out[2]}, x.options().memory_format(fmt));
  const int64_t count = y.numel();
  if (count == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softpool_forward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    forward_kernel<scalar_t, acc_t><<<blocks_for(count), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), nullptr, g, x.size(1), count, strides_of(x),
        strides_of(y));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const Geometry& g,
                         at::MemoryFormat fmt) {
  const c10::cuda::CUDAGuard guard(x.device());
  const bool disjoint = windows_disjoint(g);
  at::Tensor dx = !disjoint || windows_tile(g) ? at::empty_like(x, fmt) : at::zeros_like(x, fmt);
  if (x.numel() == 0) return dx;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softpool_backward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const int64_t outputs = y.numel();
    if (disjoint) {
      disjoint_backward_kernel<scalar_t, acc_t><<<blocks_for(outputs), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
          dx.mutable_data_ptr<scalar_t>(), g, x.size(1), outputs, strides_of(grad), strides_of(x), strides_of(y),
          strides_of(dx));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    at::Tensor lse = at::empty(y.sizes(), x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    forward_kernel<scalar_t, acc_t><<<blocks_for(outputs), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), nullptr, lse.mutable_data_ptr<acc_t>(), g, x.size(1), outputs, strides_of(x),
        strides_of(lse));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gather_backward_kernel<scalar_t, acc_t><<<blocks_for(x.numel()), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
        lse.const_data_ptr<acc_t>(), dx.mutable_data_ptr<scalar_t>(), g, x.size(1), x.numel(), strides_of(grad),
        strides_of(x), strides_of(y), strides_of(lse), strides_of(dx));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace softpool
