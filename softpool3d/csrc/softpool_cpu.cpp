// CPU launchers. The fused kernel runs rows of windows as loops over ow that compilers
// vectorise, with the element arithmetic of softpool_kernel.h. The per_element mode runs the
// CUDA kernels' per-index bodies and launch sequence (softpool_launch.h) over the same index
// ranges as the CUDA grids, so that CI executes everything a CUDA thread does.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "softpool_launch.h"

namespace softpool {
namespace {

// Grain of at::parallel_for in rows, aiming at about 32k inner-loop steps per task.
int64_t grain(int64_t row_work) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_work)); }

int64_t window_volume(const Geometry& g) { return g.kernel[0] * g.kernel[1] * g.kernel[2]; }

at::Tensor empty_output(const at::Tensor& x, const Geometry& g, at::MemoryFormat fmt) {
  return at::empty({x.size(0), x.size(1), g.out[0], g.out[1], g.out[2]},
                   x.options().memory_format(fmt));
}

// Outputs [lo, hi) along W whose windows lie wholly inside the input; their rows run as
// loops over ow that compilers vectorise. Windows cut by padding or ceil_mode (at most a few
// per row) go through the per-window functions of softpool_kernel.h.
// Adaptive windows differ in length, so none is interior: all take the per-window functions.
void interior_range(const Geometry& g, int64_t* lo, int64_t* hi) {
  if (g.adaptive) {
    *lo = *hi = 0;
    return;
  }
  const int64_t first = (g.pad[2] + g.stride[2] - 1) / g.stride[2];
  const int64_t room = g.in[2] + g.pad[2] - g.kernel[2];
  const int64_t last = room < 0 ? 0 : std::min<int64_t>(g.out[2], room / g.stride[2] + 1);
  *lo = std::min<int64_t>(first, g.out[2]);
  *hi = std::max<int64_t>(last, *lo);
}

// dst[i] = src[i * step] for i < n; the common steps 1 and 2 get loops with constant strides,
// which compilers vectorise.
template <typename dst_t, typename src_t>
void strided_copy(dst_t* __restrict__ dst, const src_t* __restrict__ src, int64_t step, int64_t n) {
  if (step == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<dst_t>(src[i]);
  } else if (step == 2) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<dst_t>(src[2 * i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<dst_t>(src[i * step]);
  }
}

// dst[i * step] = src[i] for i < n, with the same constant-stride cases.
template <typename dst_t, typename src_t>
void strided_store(dst_t* __restrict__ dst, const src_t* __restrict__ src, int64_t step, int64_t n) {
  if (step == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<dst_t>(src[i]);
  } else if (step == 2) {
    for (int64_t i = 0; i < n; ++i) dst[2 * i] = static_cast<dst_t>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * step] = static_cast<dst_t>(src[i]);
  }
}

// Row statistics of outputs ow in [o0, o0 + n) of output row (ot, oh), all interior along W.
// The window values are first gathered into `vals` (taps x n, contiguous in ow) so that the
// max, exp and sum loops run over contiguous memory and vectorise; m, s and ws receive each
// window's max m, sum exp(x - m) and sum exp(x - m) (x - m), in window_forward's order.
template <typename scalar_t, typename acc_t>
struct RowStats {
  static constexpr int kLanes = 8;

  RowStats(const Geometry& g, int64_t chunk)
      : chunk(chunk),
        vals(g.kernel[0] * g.kernel[1] * g.kernel[2] * chunk),
        exps(vals.size()),
        m(chunk),
        s(chunk),
        ws(chunk) {}

  // Gathers the windows into vals and computes exps = exp(x - m), m, s and ws; returns the
  // number of taps per window. After share_plane, exps come from the plane's shared
  // exponentials and windows too far below the plane max are flagged in `exact`.
  int64_t compute(const scalar_t* plane, at::IntArrayRef xs, const Geometry& g, int64_t ot, int64_t oh, int64_t o0,
                  int64_t n) {
    if (shared_vals != nullptr) return compute_shared(g, ot, oh, o0, n);
    int64_t t0, t1, h0, h1;
    window_range(g, 0, ot, &t0, &t1);
    window_range(g, 1, oh, &h0, &h1);
    const int64_t step = g.stride[2] * xs[4];
    const int64_t w0 = o0 * g.stride[2] - g.pad[2];
    acc_t* __restrict__ v = vals.data();
    acc_t* __restrict__ ex = exps.data();
    acc_t* __restrict__ mx = m.data();
    acc_t* __restrict__ sum = s.data();
    acc_t* __restrict__ wsum = ws.data();
    int64_t taps = 0;
    if (n == 1) {
      // One window (e.g. global pooling): loops over its taps instead of over outputs.
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t h = h0; h < h1; ++h) {
          const scalar_t* p = plane + t * xs[2] + h * xs[3] + w0 * xs[4];
          for (int64_t j = 0; j < g.kernel[2]; ++j) v[taps + j] = static_cast<acc_t>(p[j * xs[4]]);
          taps += g.kernel[2];
        }
      // kLanes independent partial reductions, so that these loops vectorise too
      acc_t top[kLanes], total[kLanes], weighted[kLanes];
      for (int l = 0; l < kLanes; ++l) top[l] = v[0];
      const int64_t body = taps - taps % kLanes;
      for (int64_t k = 0; k < body; k += kLanes)
        for (int l = 0; l < kLanes; ++l) top[l] = v[k + l] > top[l] ? v[k + l] : top[l];
      for (int64_t k = body; k < taps; ++k) top[0] = v[k] > top[0] ? v[k] : top[0];
      for (int l = 1; l < kLanes; ++l) top[0] = top[l] > top[0] ? top[l] : top[0];
      const acc_t m0 = top[0];
      for (int64_t k = 0; k < taps; ++k) ex[k] = exp_nonpositive(v[k] - m0);
      for (int l = 0; l < kLanes; ++l) total[l] = weighted[l] = acc_t(0);
      for (int64_t k = 0; k < body; k += kLanes)
        for (int l = 0; l < kLanes; ++l) {
          total[l] += ex[k + l];
          weighted[l] += ex[k + l] * (v[k + l] - m0);
        }
      for (int64_t k = body; k < taps; ++k) {
        total[0] += ex[k];
        weighted[0] += ex[k] * (v[k] - m0);
      }
      for (int l = 1; l < kLanes; ++l) {
        total[0] += total[l];
        weighted[0] += weighted[l];
      }
      mx[0] = m0;
      sum[0] = total[0];
      wsum[0] = weighted[0];
      return taps;
    }
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t j = 0; j < g.kernel[2]; ++j, ++taps) {
          const scalar_t* p = plane + t * xs[2] + h * xs[3] + (w0 + j) * xs[4];
          acc_t* __restrict__ dst = v + taps * n;
          strided_copy(dst, p, step, n);
        }
    for (int64_t i = 0; i < n; ++i) mx[i] = v[i];
    for (int64_t k = 0; k < taps; ++k)
      for (int64_t i = 0; i < n; ++i) mx[i] = v[k * n + i] > mx[i] ? v[k * n + i] : mx[i];
    for (int64_t i = 0; i < n; ++i) sum[i] = wsum[i] = acc_t(0);
    for (int64_t k = 0; k < taps; ++k)
      for (int64_t i = 0; i < n; ++i) {
        const acc_t x = v[k * n + i];
        const acc_t e = exp_nonpositive(x - mx[i]);
        ex[k * n + i] = e;
        sum[i] += e;
        wsum[i] += e * (x - mx[i]);
      }
    return taps;
  }

  // Overlapping windows share inputs: exp(x - M) is computed once per input of a plane with
  // max M (values and exponentials as contiguous (T, H, W) buffers) and every window's sums
  // come from it, with weights exp(x - M) / sum_j exp(x_j - M) equal to exp(x - m) / sum_j exp(x_j - m).
  // A window whose max m lies more than `kShareRange` below M (its exponentials could
  // underflow) is flagged in `exact` for the per-window functions.
  void share_plane(const acc_t* values, const acc_t* exponentials, acc_t plane_max, const Geometry& g) {
    shared_vals = values;
    shared_exps = exponentials;
    shared_floor = plane_max - (sizeof(acc_t) == sizeof(double) ? acc_t(600) : acc_t(60));
    shared_strides[0] = g.in[1] * g.in[2];
    shared_strides[1] = g.in[2];
    exact.resize(chunk);
  }

  int64_t compute_shared(const Geometry& g, int64_t ot, int64_t oh, int64_t o0, int64_t n) {
    int64_t t0, t1, h0, h1;
    window_range(g, 0, ot, &t0, &t1);
    window_range(g, 1, oh, &h0, &h1);
    const int64_t w0 = o0 * g.stride[2] - g.pad[2];
    acc_t* __restrict__ v = vals.data();
    acc_t* __restrict__ ex = exps.data();
    acc_t* __restrict__ mx = m.data();
    acc_t* __restrict__ sum = s.data();
    acc_t* __restrict__ wsum = ws.data();
    int64_t taps = 0;
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t j = 0; j < g.kernel[2]; ++j, ++taps) {
          const int64_t offset = t * shared_strides[0] + h * shared_strides[1] + w0 + j;
          const acc_t* __restrict__ pv = shared_vals + offset;
          const acc_t* __restrict__ pe = shared_exps + offset;
          for (int64_t i = 0; i < n; ++i) {
            v[taps * n + i] = pv[i * g.stride[2]];
            ex[taps * n + i] = pe[i * g.stride[2]];
          }
        }
    for (int64_t i = 0; i < n; ++i) mx[i] = v[i];
    for (int64_t k = 0; k < taps; ++k)
      for (int64_t i = 0; i < n; ++i) mx[i] = v[k * n + i] > mx[i] ? v[k * n + i] : mx[i];
    for (int64_t i = 0; i < n; ++i) sum[i] = wsum[i] = acc_t(0);
    for (int64_t k = 0; k < taps; ++k)
      for (int64_t i = 0; i < n; ++i) {
        const acc_t e = ex[k * n + i];
        sum[i] += e;
        wsum[i] += e * (v[k * n + i] - mx[i]);
      }
    for (int64_t i = 0; i < n; ++i) exact[i] = mx[i] < shared_floor;
    return taps;
  }

  int64_t chunk;
  std::vector<acc_t> vals, exps, m, s, ws;
  const acc_t* shared_vals = nullptr;
  const acc_t* shared_exps = nullptr;
  acc_t shared_floor = 0;
  int64_t shared_strides[2] = {0, 0};
  std::vector<char> exact;
};

// Fills `values` with the (n, c) plane in acc_t (contiguous (T, H, W)) and `exponentials` with
// exp(x - M); returns the plane max M.
template <typename scalar_t, typename acc_t>
acc_t load_plane(const scalar_t* plane, at::IntArrayRef xs, const Geometry& g, std::vector<acc_t>& values,
                 std::vector<acc_t>& exponentials) {
  acc_t* __restrict__ v = values.data();
  int64_t k = 0;
  for (int64_t t = 0; t < g.in[0]; ++t)
    for (int64_t h = 0; h < g.in[1]; ++h) {
      const scalar_t* row = plane + t * xs[2] + h * xs[3];
      for (int64_t w = 0; w < g.in[2]; ++w) v[k + w] = static_cast<acc_t>(row[w * xs[4]]);
      k += g.in[2];
    }
  acc_t top = v[0];
  for (int64_t i = 0; i < k; ++i) top = v[i] > top ? v[i] : top;
  acc_t* __restrict__ e = exponentials.data();
  for (int64_t i = 0; i < k; ++i) e[i] = exp_nonpositive(v[i] - top);
  return top;
}

// Outputs per chunk of a row: the gathered windows of a chunk stay within about 64 KiB.
int64_t chunk_size(const Geometry& g) {
  return std::max<int64_t>(1, std::min<int64_t>(g.out[2], 16384 / (g.kernel[0] * g.kernel[1] * g.kernel[2])));
}

// Calls fn(ow) for the outputs outside the interior range [lo, hi).
template <typename Fn>
void for_each_edge(const Geometry& g, int64_t lo, int64_t hi, const Fn& fn) {
  for (int64_t ow = 0; ow < lo; ++ow) fn(ow);
  for (int64_t ow = hi; ow < g.out[2]; ++ow) fn(ow);
}

}  // namespace

at::Tensor forward_cpu(const at::Tensor& x, const Geometry& g, at::MemoryFormat fmt) {
  at::Tensor y = empty_output(x, g, fmt);
  const int64_t channels = x.size(1);
  const int64_t planes = x.size(0) * channels;
  int64_t lo = 0, hi = 0;
  interior_range(g, &lo, &hi);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softpool_forward_cpu", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const auto xs = x.strides();
    const auto ys = y.strides();
    const auto forward_row = [&](RowStats<scalar_t, acc_t>& stats, int64_t nc, int64_t ot, int64_t oh) {
      const scalar_t* plane = xp + (nc / channels) * xs[0] + (nc % channels) * xs[1];
      scalar_t* out = yp + (nc / channels) * ys[0] + (nc % channels) * ys[1] + ot * ys[2] + oh * ys[3];
      const auto exact = [&](int64_t ow) {
        acc_t lse;
        const Window win = output_window(g, ot, oh, ow);
        out[ow * ys[4]] = static_cast<scalar_t>(window_forward<scalar_t, acc_t>(plane, xs[2], xs[3], xs[4], win, &lse));
      };
      for_each_edge(g, lo, hi, exact);
      for (int64_t o0 = lo; o0 < hi; o0 += stats.chunk) {
        const int64_t n = std::min(stats.chunk, hi - o0);
        stats.compute(plane, xs, g, ot, oh, o0, n);
        for (int64_t i = 0; i < n; ++i) out[(o0 + i) * ys[4]] = static_cast<scalar_t>(stats.m[i] + stats.ws[i] / stats.s[i]);
        if (stats.shared_vals == nullptr) continue;
        for (int64_t i = 0; i < n; ++i)
          if (stats.exact[i]) exact(o0 + i);
      }
    };
    if (windows_disjoint(g) || g.adaptive) {
      const int64_t rows = planes * g.out[0] * g.out[1];
      at::parallel_for(0, rows, grain(g.out[2] * window_volume(g)), [&](int64_t begin, int64_t end) {
        RowStats<scalar_t, acc_t> stats(g, chunk_size(g));
        for (int64_t row = begin; row < end; ++row)
          forward_row(stats, row / (g.out[0] * g.out[1]), (row / g.out[1]) % g.out[0], row % g.out[1]);
      });
      return;
    }
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      RowStats<scalar_t, acc_t> stats(g, chunk_size(g));
      std::vector<acc_t> values(g.in[0] * g.in[1] * g.in[2]), exponentials(values.size());
      for (int64_t nc = begin; nc < end; ++nc) {
        const scalar_t* plane = xp + (nc / channels) * xs[0] + (nc % channels) * xs[1];
        stats.share_plane(values.data(), exponentials.data(), load_plane(plane, xs, g, values, exponentials), g);
        for (int64_t ot = 0; ot < g.out[0]; ++ot)
          for (int64_t oh = 0; oh < g.out[1]; ++oh) forward_row(stats, nc, ot, oh);
      }
    });
  });
  return y;
}

namespace {

// Backward of output row (ot, oh) of one (n, c) plane: for every input of the row's windows,
// writes (or, when accumulate, adds) its gradient into out (strides os); out_t is the type of
// dx, or acc_t when accumulating over overlapping windows.
template <typename scalar_t, typename acc_t, typename out_t>
void row_backward(RowStats<scalar_t, acc_t>& stats, std::vector<acc_t>& grads, const scalar_t* plane, at::IntArrayRef xs,
                  const scalar_t* yr, int64_t ystep, const scalar_t* gr, int64_t gstep, out_t* out, const int64_t* os,
                  const Geometry& g, int64_t ot, int64_t oh, int64_t lo, int64_t hi, bool accumulate) {
  const auto exact = [&](int64_t ow) {
    window_backward<scalar_t, acc_t, out_t>(plane, xs[2], xs[3], xs[4], out, os[0], os[1], os[2],
                                            output_window(g, ot, oh, ow), static_cast<acc_t>(yr[ow * ystep]),
                                            static_cast<acc_t>(gr[ow * gstep]), accumulate);
  };
  for_each_edge(g, lo, hi, exact);
  int64_t t0, t1, h0, h1;
  window_range(g, 0, ot, &t0, &t1);
  window_range(g, 1, oh, &h0, &h1);
  for (int64_t o0 = lo; o0 < hi; o0 += stats.chunk) {
    const int64_t count = std::min(stats.chunk, hi - o0);
    const int64_t taps = stats.compute(plane, xs, g, ot, oh, o0, count);
    acc_t* __restrict__ inv_sum = stats.m.data();
    acc_t* __restrict__ yv = stats.ws.data();
    acc_t* __restrict__ gv = stats.s.data();
    for (int64_t i = 0; i < count; ++i) {
      inv_sum[i] = acc_t(1) / gv[i];
      yv[i] = static_cast<acc_t>(yr[(o0 + i) * ystep]);
      gv[i] = static_cast<acc_t>(gr[(o0 + i) * gstep]);
    }
    const acc_t* __restrict__ v = stats.vals.data();
    const acc_t* __restrict__ ex = stats.exps.data();
    acc_t* __restrict__ dv = grads.data();
    if (count == 1) {
      for (int64_t k = 0; k < taps; ++k) dv[k] = weighted_grad(ex[k] * inv_sum[0], v[k], yv[0], gv[0]);
    } else {
      for (int64_t k = 0; k < taps; ++k)
        for (int64_t i = 0; i < count; ++i) {
          const int64_t at = k * count + i;
          dv[at] = weighted_grad(ex[at] * inv_sum[i], v[at], yv[i], gv[i]);
        }
    }
    if (stats.shared_vals != nullptr) {
      // shared exponentials only arise with overlapping windows, so accumulate is set here
      for (int64_t i = 0; i < count; ++i) {
        if (!stats.exact[i]) continue;
        for (int64_t k = 0; k < taps; ++k) dv[k * count + i] = acc_t(0);
        exact(o0 + i);
      }
    }
    const int64_t w0 = o0 * g.stride[2] - g.pad[2];
    const int64_t step = g.stride[2] * os[2];
    int64_t k = 0;
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t j = 0; j < g.kernel[2]; ++j, ++k) {
          out_t* d = out + t * os[0] + h * os[1] + (w0 + j) * os[2];
          if (accumulate) {
            for (int64_t i = 0; i < count; ++i) d[i * step] += static_cast<out_t>(dv[k * count + i]);
          } else {
            strided_store(d, dv + k * count, step, count);
          }
        }
  }
}

}  // namespace

at::Tensor backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const Geometry& g,
                        at::MemoryFormat fmt) {
  const int64_t channels = x.size(1);
  const bool disjoint = windows_disjoint(g);
  at::Tensor dx = !disjoint || windows_tile(g) ? at::empty_like(x, fmt) : at::zeros_like(x, fmt);
  const auto xs = x.strides();
  const auto ys = y.strides();
  const auto gs = grad.strides();
  const auto ds = dx.strides();
  int64_t lo = 0, hi = 0;
  interior_range(g, &lo, &hi);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softpool_backward_cpu", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
    const int64_t out_rows = x.size(0) * channels * g.out[0] * g.out[1];
    if (disjoint) {
      // Each input lies in at most one window: rows of windows write their inputs directly.
      at::parallel_for(0, out_rows, grain(g.out[2] * window_volume(g)), [&](int64_t begin, int64_t end) {
        RowStats<scalar_t, acc_t> stats(g, chunk_size(g));
        std::vector<acc_t> grads(stats.vals.size());
        for (int64_t row = begin; row < end; ++row) {
          const int64_t oh = row % g.out[1];
          const int64_t ot = (row / g.out[1]) % g.out[0];
          const int64_t n = row / (g.out[1] * g.out[0]) / channels, c = row / (g.out[1] * g.out[0]) % channels;
          row_backward<scalar_t, acc_t, scalar_t>(
              stats, grads, xp + n * xs[0] + c * xs[1], xs, yp + n * ys[0] + c * ys[1] + ot * ys[2] + oh * ys[3],
              ys[4], gp + n * gs[0] + c * gs[1] + ot * gs[2] + oh * gs[3], gs[4], dp + n * ds[0] + c * ds[1],
              ds.data() + 2, g, ot, oh, lo, hi, false);
        }
      });
      return;
    }
    // Overlapping windows: each task owns whole (n, c) planes, shares their exponentials
    // between windows and accumulates their gradient in acc_t, row by row in a fixed order
    // (no atomics, deterministic).
    const int64_t plane_size = g.in[0] * g.in[1] * g.in[2];
    const int64_t acc_strides[3] = {g.in[1] * g.in[2], g.in[2], 1};
    at::parallel_for(0, x.size(0) * channels, 1, [&](int64_t begin, int64_t end) {
      RowStats<scalar_t, acc_t> stats(g, chunk_size(g));
      std::vector<acc_t> grads(stats.vals.size());
      std::vector<acc_t> acc(plane_size), values(plane_size), exponentials(plane_size);
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / channels, c = nc % channels;
        const scalar_t* plane = xp + n * xs[0] + c * xs[1];
        stats.share_plane(values.data(), exponentials.data(), load_plane(plane, xs, g, values, exponentials), g);
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t ot = 0; ot < g.out[0]; ++ot)
          for (int64_t oh = 0; oh < g.out[1]; ++oh)
            row_backward<scalar_t, acc_t, acc_t>(
                stats, grads, plane, xs, yp + n * ys[0] + c * ys[1] + ot * ys[2] + oh * ys[3],
                ys[4], gp + n * gs[0] + c * gs[1] + ot * gs[2] + oh * gs[3], gs[4], acc.data(), acc_strides, g, ot,
                oh, lo, hi, true);
        scalar_t* dplane = dp + n * ds[0] + c * ds[1];
        for (int64_t t = 0; t < g.in[0]; ++t)
          for (int64_t h = 0; h < g.in[1]; ++h)
            for (int64_t w = 0; w < g.in[2]; ++w)
              dplane[t * ds[2] + h * ds[3] + w * ds[4]] = static_cast<scalar_t>(acc[(t * g.in[1] + h) * g.in[2] + w]);
      }
    });
  });
  return dx;
}

namespace {

// Runs body(i) for every i in [0, grid_threads(count)), the range a CUDA grid covers.
struct CpuLaunch {
  template <typename Body>
  void operator()(const Body& body, int64_t count) const {
    using index_t = typename Body::index_type;
    at::parallel_for(0, grid_threads(count), kThreads, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) body(static_cast<index_t>(i));
    });
  }
};

}  // namespace

at::Tensor forward_per_element_cpu(const at::Tensor& x, const Geometry& g, at::MemoryFormat fmt, bool force_int64,
                                   at::Tensor* lse) {
  return forward_per_index(CpuLaunch{}, x, g, fmt, force_int64, lse);
}

at::Tensor backward_per_element_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const Geometry& g,
                                    at::MemoryFormat fmt, bool force_int64, const at::Tensor& lse) {
  return backward_per_index(CpuLaunch{}, grad, x, y, g, fmt, force_int64, lse);
}

}  // namespace softpool
