// CUDA launcher: every kernel is per_index_kernel, which runs one per-index body of
// softpool_kernel.h on each thread; which bodies run, in which order and with which index type
// is decided by softpool_launch.h, shared with the CPU's per_element mode.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "softpool_launch.h"

namespace softpool {
namespace {

template <typename Body>
__global__ void __launch_bounds__(kThreads) per_index_kernel(const Body body) {
  using index_t = typename Body::index_type;
  body(static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) + static_cast<index_t>(threadIdx.x));
}

struct CudaLaunch {
  cudaStream_t stream;

  // Runs body(i) for i in [0, grid_threads(count)).
  template <typename Body>
  void operator()(const Body& body, int64_t count) const {
    TORCH_CHECK(grid_threads(count) / kThreads <= std::numeric_limits<int32_t>::max(),
                "softpool: ", count, " elements exceed one CUDA grid");
    const unsigned blocks = static_cast<unsigned>(grid_threads(count) / kThreads);
    per_index_kernel<Body><<<blocks, kThreads, 0, stream>>>(body);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

at::Tensor forward_cuda(const at::Tensor& x, const Geometry& g, at::MemoryFormat fmt, bool force_int64,
                        at::Tensor* lse) {
  const c10::cuda::CUDAGuard guard(x.device());
  return forward_per_index(CudaLaunch{c10::cuda::getCurrentCUDAStream()}, x, g, fmt, force_int64, lse);
}

at::Tensor backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const Geometry& g,
                         at::MemoryFormat fmt, bool force_int64, const at::Tensor& lse) {
  const c10::cuda::CUDAGuard guard(x.device());
  return backward_per_index(CudaLaunch{c10::cuda::getCurrentCUDAStream()}, grad, x, y, g, fmt, force_int64, lse);
}

}  // namespace softpool
