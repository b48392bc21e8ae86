// Launchers of the SoftPool kernels on 5-D (N, C, T, H, W) tensors of any strides; results are
// allocated in memory format fmt.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "softpool_kernel.h"

namespace softpool {

// Checks a 5-D input and the pooling arguments and returns the problem's geometry; output
// sizes follow avg_pool3d's rule, including ceil_mode.
Geometry make_geometry(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                       bool ceil_mode);

// Checks a 5-D input and the output size (T, H, W) of adaptive pooling and returns its geometry.
Geometry make_adaptive_geometry(const at::Tensor& x, at::IntArrayRef output_size);

// True when every input lies in at most one window (stride >= kernel in every dimension).
bool windows_disjoint(const Geometry& g);

// True when every input lies in exactly one window.
bool windows_tile(const Geometry& g);

// The fused CPU kernel: rows of windows as vectorised loops.
at::Tensor forward_cpu(const at::Tensor& x, const Geometry& g, at::MemoryFormat fmt);
at::Tensor backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const Geometry& g,
                        at::MemoryFormat fmt);

// The CUDA kernels' per-index bodies and launch sequence (softpool_launch.h) run on the CPU over
// the same index ranges as the CUDA grids; force_int64 turns off the int32_t index fast path. A
// forward given lse also stores each window's log-sum-exp there; a backward given a defined lse
// reads it instead of running the forward again (softpool_launch.h).
at::Tensor forward_per_element_cpu(const at::Tensor& x, const Geometry& g, at::MemoryFormat fmt, bool force_int64,
                                   at::Tensor* lse);
at::Tensor backward_per_element_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const Geometry& g,
                                    at::MemoryFormat fmt, bool force_int64, const at::Tensor& lse);

#ifdef SOFTPOOL_WITH_CUDA
at::Tensor forward_cuda(const at::Tensor& x, const Geometry& g, at::MemoryFormat fmt, bool force_int64,
                        at::Tensor* lse);
at::Tensor backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const Geometry& g,
                         at::MemoryFormat fmt, bool force_int64, const at::Tensor& lse);
#endif

}  // namespace softpool
