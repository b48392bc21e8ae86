// The per-index launch plan and sequence, shared by the CUDA launcher (softpool_cuda.cu) and the
// CPU's per_element mode (softpool_cpu.cpp): both call forward_per_index/backward_per_index with
// their own `launch(body, count)`, which runs body(i) for every i in [0, grid_threads(count)): a
// CUDA grid of grid_threads(count) / kThreads blocks, or an at::parallel_for over the same range.
// Everything but that call runs in CI.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "softpool_ops.h"

namespace softpool {

// Windows of more than kSplitAbove elements are split into chunks, each reduced by its own
// thread (chunk j takes elements j, j + c, j + 2c, ... of the window's kernel box, so that a
// warp reads neighbouring elements): c = ceil(kernel volume / kChunk) chunks of at most kChunk
// elements, but no more than kSplitThreads threads in all. Splitting pays only while the outputs
// alone leave the GPU idle (an H100 holds 132 x 2,048 = 270,336 resident threads): with
// kSplitThreads / 2 outputs or more, one thread per output already fills it and nothing is split.
// This also caps the partials at 3 x (kSplitThreads + kSplitThreads / kGroup + outputs)
// accumulators with outputs < kSplitThreads / 2 (under 10 MB in float64) whatever the stride;
// overlapping long windows used to take 3 x outputs x chunks (4 GB for the index-width test's
// 16,384 x 16,128 outputs of 257 elements, which now run one thread per output).
// Windows of more than kGroup chunks merge their partials in two levels: groups of kGroup chunks,
// one thread each, then one thread per output over its groups.
//
// X3D-S's first squeeze-excitation pool at batch 8 has 8 x 24 = 192 outputs of 16 x 56 x 56 =
// 50,176 elements: 784 chunks of 64, 150,528 threads of 64 elements each (588 blocks of 256, 56 % of
// the resident threads), then 192 x 25 group threads of 32 partials and 192 output threads of 25
// (instead of 192 threads of 784 partials, read twice). Its backward runs one thread per input.
// The global head pool of X3D-S at batch 8 (8 x 432 outputs of 16 x 7 x 7 = 784 elements) becomes
// 3,456 x 13 = 44,928 threads of at most 64 elements. Windows of at most 256 elements (every
// 3 x 3 x 3 or 2 x 2 x 2 pool) keep one thread per output. The chunks depend on the kernel and the
// output count, so a batch large enough to fill the GPU turns the split off.
constexpr int64_t kChunk = 64;
constexpr int64_t kSplitAbove = 256;
constexpr int64_t kSplitThreads = int64_t(1) << 18;
constexpr int64_t kGroup = 32;

inline int64_t kernel_volume(const Geometry& g) { return g.kernel[0] * g.kernel[1] * g.kernel[2]; }

// Chunks per window of `outputs` outputs: 1 (no split) or up to ceil(volume / kChunk).
inline int64_t chunks_per_window(const Geometry& g, int64_t outputs) {
  const int64_t volume = kernel_volume(g);
  if (volume <= kSplitAbove) return 1;
  return std::max<int64_t>(1, std::min((volume + kChunk - 1) / kChunk, kSplitThreads / std::max<int64_t>(outputs, 1)));
}

// Groups of kGroup chunks merged by the second level, or 0 (the combine reads the chunks).
inline int64_t groups_of(int64_t chunks) { return chunks > kGroup ? (chunks + kGroup - 1) / kGroup : 0; }

// 1 + the largest element offset of a tensor of these sizes and strides, or its element count
// when larger (expanded dimensions), so that both offsets and linear indices stay below it.
inline int64_t index_bound(at::IntArrayRef sizes, at::IntArrayRef strides) {
  int64_t last = 0, numel = 1;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] == 0) return 0;
    last += (sizes[d] - 1) * strides[d];
    numel *= sizes[d];
  }
  return std::max(last + 1, numel);
}

// Whether int32_t arithmetic can run a launch: every thread index of its grids (threads, before
// rounding up to whole blocks), every offset and index of its tensors (sizes and strides) and
// every coordinate the window arithmetic forms (adaptive windows: products of an index and a size)
// stay below 2^31.
inline bool index_fits_int32(const std::vector<int64_t>& threads, const std::vector<at::IntArrayRef>& sizes,
                             const std::vector<at::IntArrayRef>& strides, const Geometry& g) {
  const int64_t limit = std::numeric_limits<int32_t>::max();
  for (const int64_t count : threads)
    if (grid_threads(count) > limit) return false;
  for (size_t k = 0; k < sizes.size(); ++k)
    if (index_bound(sizes[k], strides[k]) > limit) return false;
  for (int d = 0; d < 3; ++d)
    if (g.in[d] + 2 * g.pad[d] + g.kernel[d] + g.stride[d] > limit ||
        (g.adaptive && (g.in[d] + 1) * (g.out[d] + 1) > limit))
      return false;
  return true;
}

// What one forward or backward call launches.
struct Plan {
  int64_t chunks;          // chunks per window (1: one thread per output)
  int64_t groups;          // groups of chunks merged by a second level (0: none)
  bool gather;             // backward runs one thread per input (else one per output: disjoint short windows)
  bool index32;            // int32_t index arithmetic
  bool channels_fastest;   // thread indices walk C fastest (the input's channel stride is 1), else W
};

// The plan for x (any strides) pooled by g, with outputs allocated densely. For a backward,
// y and grad are the saved output and incoming gradient (any strides); undefined for a forward.
// force_int64 turns off the int32_t fast path (tests use it to run the int64_t path).
inline Plan make_plan(const at::Tensor& x, const Geometry& g, const at::Tensor& y, const at::Tensor& grad,
                      bool force_int64) {
  Plan plan;
  const int64_t outputs = x.size(0) * x.size(1) * g.out[0] * g.out[1] * g.out[2];
  plan.chunks = chunks_per_window(g, outputs);
  plan.groups = groups_of(plan.chunks);
  const bool backward = grad.defined();
  plan.gather = kernel_volume(g) > kSplitAbove || !windows_disjoint(g);
  plan.channels_fastest = x.size(1) > 1 && x.stride(1) == 1;
  const int64_t partials = plan.chunks > 1 ? 3 * outputs * (plan.chunks + plan.groups) : 0;
  const std::vector<int64_t> dense = {outputs, partials, kernel_volume(g) + plan.chunks};
  const int64_t unit = 1;
  std::vector<int64_t> threads = {outputs, outputs * plan.chunks, outputs * plan.groups};
  std::vector<at::IntArrayRef> sizes = {x.sizes()}, strides = {x.strides()};
  for (const int64_t& n : dense) {
    sizes.emplace_back(n);
    strides.emplace_back(unit);
  }
  if (backward) {
    threads.push_back(x.numel());
    for (const at::Tensor* t : {&y, &grad}) {
      sizes.push_back(t->sizes());
      strides.push_back(t->strides());
    }
  }
  plan.index32 = !force_int64 && index_fits_int32(threads, sizes, strides, g);
  return plan;
}

template <typename index_t>
Strides<index_t> strides_of(const at::Tensor& t) {
  Strides<index_t> out;
  for (int d = 0; d < 5; ++d) out.s[d] = static_cast<index_t>(t.stride(d));
  return out;
}

// Forward (y) or log-sum-exp (lse) of every output: one body per output, or the split passes.
template <typename scalar_t, typename acc_t, typename index_t, typename Launch>
void launch_forward(const Launch& launch, const at::Tensor& x, const Plan& plan, const Geometry& geo, scalar_t* y,
                    const Strides<index_t>& ys, acc_t* lse, const Strides<index_t>& ls) {
  const GeometryT<index_t> g = narrow_geometry<index_t>(geo);
  const index_t channels = static_cast<index_t>(x.size(1));
  const index_t outputs = static_cast<index_t>(x.size(0)) * channels * g.out[0] * g.out[1] * g.out[2];
  const Unravel<index_t> order(channels, g.out, plan.channels_fastest);
  const Strides<index_t> xs = strides_of<index_t>(x);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  if (plan.chunks == 1) {
    launch(ForwardBody<scalar_t, acc_t, index_t>{xp, y, lse, g, outputs, order, xs, ys, ls}, outputs);
    return;
  }
  const index_t chunks = static_cast<index_t>(plan.chunks), groups = static_cast<index_t>(plan.groups);
  at::Tensor partials = at::empty({3 * static_cast<int64_t>(outputs) * (plan.chunks + plan.groups)},
                                  x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* pp = partials.mutable_data_ptr<acc_t>();
  const index_t count = outputs * chunks;
  const index_t box_plane = g.kernel[1] * g.kernel[2];
  const index_t step[3] = {chunks / box_plane, chunks / g.kernel[2] % g.kernel[1], chunks % g.kernel[2]};
  launch(PartialBody<scalar_t, acc_t, index_t>{xp, pp, g, count, outputs, Divider<index_t>(chunks),
                                               Divider<index_t>(channels), Divider<index_t>(g.kernel[2]),
                                               Divider<index_t>(g.kernel[1]), {step[0], step[1], step[2]},
                                               static_cast<index_t>(kernel_volume(geo) / plan.chunks),
                                               static_cast<index_t>(kernel_volume(geo) % plan.chunks),
                                               order, xs},
         count);
  const acc_t* last = pp;
  index_t parts = chunks;
  if (groups > 0) {
    acc_t* merged = pp + 3 * static_cast<int64_t>(count);
    launch(GroupBody<acc_t, index_t>{pp, merged, outputs * groups, outputs, chunks, static_cast<index_t>(kGroup),
                                     Divider<index_t>(outputs), order},
           outputs * groups);
    last = merged;
    parts = groups;
  }
  launch(CombineBody<scalar_t, acc_t, index_t>{last, y, lse, outputs, parts, order, ys, ls}, outputs);
}

// The per-window log-sum-exp of x pooled by g, in the accumulation type, laid out like the outputs'
// thread order (so that the forward writes it and the gather backward reads it coalesced).
inline at::Tensor empty_lse(const at::Tensor& x, const Geometry& g, const Plan& plan) {
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::empty({x.size(0), x.size(1), g.out[0], g.out[1], g.out[2]},
                   x.options().dtype(acc).memory_format(plan.channels_fastest ? at::MemoryFormat::ChannelsLast3d
                                                                               : at::MemoryFormat::Contiguous));
}

// y, and when lse is given, the per-window log-sum-exp (empty_lse) into *lse: the gather backward
// of long windows reads it instead of running the (split) forward again.
template <typename Launch>
at::Tensor forward_per_index(const Launch& launch, const at::Tensor& x, const Geometry& g, at::MemoryFormat fmt,
                             bool force_int64, at::Tensor* lse = nullptr) {
  at::Tensor y = at::empty({x.size(0), x.size(1), g.out[0], g.out[1], g.out[2]}, x.options().memory_format(fmt));
  const Plan plan = make_plan(x, g, at::Tensor(), at::Tensor(), force_int64);
  if (lse != nullptr) *lse = empty_lse(x, g, plan);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softpool_forward_per_index", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const auto run = [&](auto index) {
      using index_t = decltype(index);
      acc_t* lp = lse != nullptr ? lse->mutable_data_ptr<acc_t>() : nullptr;
      launch_forward<scalar_t, acc_t, index_t>(launch, x, plan, g, y.mutable_data_ptr<scalar_t>(),
                                               strides_of<index_t>(y), lp,
                                               lse != nullptr ? strides_of<index_t>(*lse) : Strides<index_t>{});
    };
    if (plan.index32) run(int32_t{});
    else run(int64_t{});
  });
  return y;
}

// saved_lse: the forward's log-sum-exp (forward_per_index), or undefined to compute it here.
template <typename Launch>
at::Tensor backward_per_index(const Launch& launch, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                              const Geometry& g, at::MemoryFormat fmt, bool force_int64,
                              const at::Tensor& saved_lse = at::Tensor()) {
  const Plan plan = make_plan(x, g, y, grad, force_int64);
  // the disjoint body writes only inputs inside a window: the others start at 0
  at::Tensor dx = plan.gather || windows_tile(g) ? at::empty_like(x, fmt) : at::zeros_like(x, fmt);
  if (x.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softpool_backward_per_index", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const auto run = [&](auto index) {
      using index_t = decltype(index);
      const GeometryT<index_t> gi = narrow_geometry<index_t>(g);
      const index_t channels = static_cast<index_t>(x.size(1));
      const bool cfast = plan.channels_fastest;
      const scalar_t* gp = grad.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* yp = y.const_data_ptr<scalar_t>();
      scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
      if (!plan.gather) {
        launch(DisjointBackwardBody<scalar_t, acc_t, index_t>{gp, xp, yp, dp, gi, static_cast<index_t>(y.numel()),
                                                              Unravel<index_t>(channels, gi.out, cfast),
                                                              strides_of<index_t>(grad), strides_of<index_t>(x),
                                                              strides_of<index_t>(y), strides_of<index_t>(dx)},
               y.numel());
        return;
      }
      at::Tensor lse = saved_lse;
      if (!lse.defined()) {
        lse = empty_lse(x, g, plan);
        launch_forward<scalar_t, acc_t, index_t>(launch, x, plan, g, nullptr, Strides<index_t>{},
                                                 lse.mutable_data_ptr<acc_t>(), strides_of<index_t>(lse));
      }
      launch(GatherBackwardBody<scalar_t, acc_t, index_t>{gp, xp, yp, lse.const_data_ptr<acc_t>(), dp, gi,
                                                          static_cast<index_t>(x.numel()),
                                                          Unravel<index_t>(channels, gi.in, cfast),
                                                          strides_of<index_t>(grad), strides_of<index_t>(x),
                                                          strides_of<index_t>(y), strides_of<index_t>(lse),
                                                          strides_of<index_t>(dx)},
             x.numel());
    };
    if (plan.index32) run(int32_t{});
    else run(int64_t{});
  });
  return dx;
}

}  // namespace softpool
