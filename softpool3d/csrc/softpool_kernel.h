// SoftPool arithmetic shared by the CPU (softpool_cpu.cpp) and CUDA (softpool_cuda.cu) kernels.
//
// A window R of a (T, H, W) plane is pooled to y = m + sum_i w_i (x_i - m) with softmax weights
// w_i = exp(x_i - lse), lse = m + log(sum_j exp(x_j - m)) and m the window max, so no exp
// argument is ever positive, every term of the sums is bounded and no finite input overflows.
// Half types accumulate in float.
// Backward, from the saved input and output only: dL/dx_i = sum_{R containing i} g_R w_i (1 + x_i - y_R).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Always inlined: the CPU kernel's loops only vectorise with the arithmetic inlined into them.
#ifdef __CUDACC__
#define SP_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define SP_HD inline __attribute__((always_inline))
#else
#define SP_HD inline
#endif

namespace softpool {

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

SP_HD float bits_to_float(int32_t bits) {
#ifdef __CUDA_ARCH__
  return __int_as_float(bits);
#else
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
#endif
}

SP_HD int32_t float_to_bits(float value) {
#ifdef __CUDA_ARCH__
  return __float_as_int(value);
#else
  int32_t out;
  std::memcpy(&out, &value, sizeof(out));
  return out;
#endif
}

// exp for arguments <= 0 (Cody-Waite reduction and a degree-6 polynomial, about 2 ulp).
// Branch-free so that compilers vectorise loops over it; the same code runs on GPUs.
SP_HD float exp_nonpositive(float x) {
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float clamped = x < -87.0f ? -87.0f : x;
  const float shifted = clamped * 1.44269504088896341f + kRound;
  const float n = shifted - kRound;
  const int32_t exponent = float_to_bits(shifted) - float_to_bits(kRound);
  const float r = (clamped - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = (p * r * r + r + 1.0f) * bits_to_float((exponent + 127) << 23);
  return x < -87.0f ? 0.0f : e;
}

SP_HD double exp_nonpositive(double x) {
#ifdef __CUDA_ARCH__
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

SP_HD float log_positive(float x) {
#ifdef __CUDA_ARCH__
  return ::logf(x);
#else
  return std::log(x);
#endif
}

SP_HD double log_positive(double x) {
#ifdef __CUDA_ARCH__
  return ::log(x);
#else
  return std::log(x);
#endif
}

// One pooled 3-D problem: input and output sizes (T, H, W), kernel, stride and padding, in the
// index type of the arithmetic (int64_t, or int32_t where the launch plan allows it). Adaptive
// pooling (adaptive_avg_pool3d's windows) has window o of dimension d at
// [floor(o in / out), ceil((o + 1) in / out)); its kernel is then the longest window, its stride
// the kernel where windows tile the input (in divisible by out) and 1 elsewhere, its padding 0.
template <typename index_t>
struct GeometryT {
  index_t in[3];
  index_t out[3];
  index_t kernel[3];
  index_t stride[3];
  index_t pad[3];
  bool adaptive;
};
using Geometry = GeometryT<int64_t>;

template <typename index_t>
GeometryT<index_t> narrow_geometry(const Geometry& g) {
  GeometryT<index_t> out;
  for (int d = 0; d < 3; ++d) {
    out.in[d] = static_cast<index_t>(g.in[d]);
    out.out[d] = static_cast<index_t>(g.out[d]);
    out.kernel[d] = static_cast<index_t>(g.kernel[d]);
    out.stride[d] = static_cast<index_t>(g.stride[d]);
    out.pad[d] = static_cast<index_t>(g.pad[d]);
  }
  out.adaptive = g.adaptive;
  return out;
}

// Window [begin, end) of output index o along dimension d, padded positions removed.
template <typename index_t>
SP_HD void window_range(const GeometryT<index_t>& g, int d, index_t o, index_t* begin, index_t* end) {
  if (g.adaptive) {
    *begin = o * g.in[d] / g.out[d];
    *end = ((o + 1) * g.in[d] + g.out[d] - 1) / g.out[d];
    return;
  }
  const index_t start = o * g.stride[d] - g.pad[d];
  const index_t stop = start + g.kernel[d];
  *begin = start < 0 ? 0 : start;
  *end = stop > g.in[d] ? g.in[d] : stop;
}

// Output windows [begin, end) along dimension d that contain input index i.
template <typename index_t>
SP_HD void windows_containing(const GeometryT<index_t>& g, int d, index_t i, index_t* begin, index_t* end) {
  if (g.adaptive) {
    // floor(o in / out) <= i  <=>  o <= ((i + 1) out - 1) / in;  ceil((o + 1) in / out) > i  <=>  o >= i out / in
    *begin = i * g.out[d] / g.in[d];
    *end = ((i + 1) * g.out[d] - 1) / g.in[d] + 1;
    return;
  }
  const index_t shifted = i + g.pad[d];
  const index_t low = shifted - g.kernel[d] + 1;
  const index_t first = low <= 0 ? 0 : (low + g.stride[d] - 1) / g.stride[d];
  const index_t last = shifted / g.stride[d] + 1;
  *begin = first;
  *end = last > g.out[d] ? g.out[d] : last;
}

// Input box [t0, t1) x [h0, h1) x [w0, w1) of one output window.
template <typename index_t>
struct WindowT {
  index_t t0, t1, h0, h1, w0, w1;

  SP_HD index_t volume() const { return (t1 - t0) * (h1 - h0) * (w1 - w0); }
};
using Window = WindowT<int64_t>;

template <typename index_t>
SP_HD WindowT<index_t> output_window(const GeometryT<index_t>& g, index_t ot, index_t oh, index_t ow) {
  WindowT<index_t> w;
  window_range(g, 0, ot, &w.t0, &w.t1);
  window_range(g, 1, oh, &w.h0, &w.h1);
  window_range(g, 2, ow, &w.w0, &w.w1);
  return w;
}

// Max of one window of the plane `x` (strides st, sh, sw).
template <typename scalar_t, typename acc_t, typename index_t>
SP_HD acc_t window_max(const scalar_t* x, index_t st, index_t sh, index_t sw, const WindowT<index_t>& win) {
  acc_t m = static_cast<acc_t>(x[win.t0 * st + win.h0 * sh + win.w0 * sw]);
  for (index_t t = win.t0; t < win.t1; ++t)
    for (index_t h = win.h0; h < win.h1; ++h) {
      const scalar_t* row = x + t * st + h * sh;
      for (index_t w = win.w0; w < win.w1; ++w) {
        const acc_t v = static_cast<acc_t>(row[w * sw]);
        m = v > m ? v : m;
      }
    }
  return m;
}

// Forward of one window of the plane `x` (strides st, sh, sw): returns y, writes lse.
template <typename scalar_t, typename acc_t, typename index_t>
SP_HD acc_t window_forward(const scalar_t* x, index_t st, index_t sh, index_t sw, const WindowT<index_t>& win,
                           acc_t* lse) {
  const acc_t m = window_max<scalar_t, acc_t>(x, st, sh, sw, win);
  acc_t sum = 0, weighted = 0;
  for (index_t t = win.t0; t < win.t1; ++t)
    for (index_t h = win.h0; h < win.h1; ++h) {
      const scalar_t* row = x + t * st + h * sh;
      for (index_t w = win.w0; w < win.w1; ++w) {
        const acc_t v = static_cast<acc_t>(row[w * sw]);
        const acc_t e = exp_nonpositive(v - m);
        sum += e;
        weighted += e * (v - m);
      }
    }
  *lse = m + log_positive(sum);
  return m + weighted / sum;
}

// Gradient contribution g w_i (1 + x_i - y) of one window with output y and incoming gradient g
// to one of its inputs x_i of softmax weight w_i.
template <typename acc_t>
SP_HD acc_t weighted_grad(acc_t weight, acc_t xi, acc_t y, acc_t g) {
  return g * weight * (acc_t(1) + xi - y);
}

// The same, with the weight computed from the window's log-sum-exp.
template <typename acc_t>
SP_HD acc_t window_grad(acc_t xi, acc_t lse, acc_t y, acc_t g) {
  return weighted_grad(exp_nonpositive(xi - lse), xi, y, g);
}

// Backward of one window: writes (or, when accumulate, adds) g w_i (1 + x_i - y) into dx
// (strides dt, dh, dw) for every input of the window, with w_i = exp(x_i - m) / sum_j exp(x_j - m).
template <typename scalar_t, typename acc_t, typename out_t, typename index_t>
SP_HD void window_backward(const scalar_t* x, index_t st, index_t sh, index_t sw, out_t* dx, index_t dt, index_t dh,
                           index_t dw, const WindowT<index_t>& win, acc_t y, acc_t g, bool accumulate) {
  const acc_t max = window_max<scalar_t, acc_t>(x, st, sh, sw, win);
  acc_t sum = 0;
  for (index_t t = win.t0; t < win.t1; ++t)
    for (index_t h = win.h0; h < win.h1; ++h)
      for (index_t w = win.w0; w < win.w1; ++w)
        sum += exp_nonpositive(static_cast<acc_t>(x[t * st + h * sh + w * sw]) - max);
  const acc_t inv_sum = acc_t(1) / sum;
  for (index_t t = win.t0; t < win.t1; ++t)
    for (index_t h = win.h0; h < win.h1; ++h) {
      const scalar_t* row = x + t * st + h * sh;
      out_t* out = dx + t * dt + h * dh;
      for (index_t w = win.w0; w < win.w1; ++w) {
        const acc_t v = static_cast<acc_t>(row[w * sw]);
        const acc_t d = weighted_grad(exp_nonpositive(v - max) * inv_sum, v, y, g);
        out[w * dw] = static_cast<out_t>(accumulate ? static_cast<acc_t>(out[w * dw]) + d : d);
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-index bodies. The CUDA kernels (softpool_cuda.cu) run body(i) on thread i of a grid of
// grid_threads(count) threads; the CPU's per_element mode (softpool_cpu.cpp) runs body(i) for
// every i of the same range. All index, unravel, stride and bounds code lives in the bodies.
// ---------------------------------------------------------------------------------------------

// Threads per CUDA block; a grid covers grid_threads(count) indices, the last block partly idle.
constexpr int64_t kThreads = 256;

SP_HD int64_t grid_threads(int64_t count) { return (count + kThreads - 1) / kThreads * kThreads; }

// Element strides of the five dimensions (N, C, T, H, W) of one tensor.
template <typename index_t>
struct Strides {
  index_t s[5];
};

// Coordinates (n, c, t, h, w) of one element of an (N, C, T, H, W) tensor.
template <typename index_t>
struct Coord {
  index_t n, c, t, h, w;
};

// Splits a linear index over (N, C, sizes[0], sizes[1], sizes[2]), W fastest.
template <typename index_t>
SP_HD Coord<index_t> unravel(index_t i, index_t channels, const index_t* sizes) {
  Coord<index_t> p;
  p.w = i % sizes[2];
  i /= sizes[2];
  p.h = i % sizes[1];
  i /= sizes[1];
  p.t = i % sizes[0];
  i /= sizes[0];
  p.c = i % channels;
  p.n = i / channels;
  return p;
}

template <typename index_t>
SP_HD index_t plane_offset(const Strides<index_t>& s, const Coord<index_t>& p) {
  return p.n * s.s[0] + p.c * s.s[1];
}

template <typename index_t>
SP_HD index_t offset(const Strides<index_t>& s, const Coord<index_t>& p) {
  return p.n * s.s[0] + p.c * s.s[1] + p.t * s.s[2] + p.h * s.s[3] + p.w * s.s[4];
}

// Forward of output i, one window per index: writes y (when not null) and lse (when not null).
template <typename scalar_t, typename acc_t, typename index_t>
struct ForwardBody {
  using index_type = index_t;
  const scalar_t* x;
  scalar_t* y;
  acc_t* lse;
  GeometryT<index_t> g;
  index_t channels, count;
  Strides<index_t> xs, ys, ls;

  SP_HD void operator()(index_t i) const {
    if (i >= count) return;
    const Coord<index_t> o = unravel(i, channels, g.out);
    acc_t l;
    const acc_t out = window_forward<scalar_t, acc_t>(x + plane_offset(xs, o), xs.s[2], xs.s[3], xs.s[4],
                                                      output_window(g, o.t, o.h, o.w), &l);
    if (y != nullptr) y[offset(ys, o)] = static_cast<scalar_t>(out);
    if (lse != nullptr) lse[offset(ls, o)] = l;
  }
};

// Long windows, pass 1: index i = output * chunks + j reduces the elements j, j + chunks,
// j + 2 chunks, ... of its output's window (flattened T, H, W, W fastest), so that the threads of
// a warp read neighbouring elements, to the partials m (max), s = sum exp(x - m) and
// ws = sum exp(x - m) (x - m), in one pass that rescales s and ws whenever the max grows. They
// are stored at partials[i], partials[count + i] and partials[2 count + i]. Chunks with j past
// the window's end (windows cut by padding) write nothing; the combine never reads them.
template <typename scalar_t, typename acc_t, typename index_t>
struct PartialBody {
  using index_type = index_t;
  const scalar_t* x;
  acc_t* partials;
  GeometryT<index_t> g;
  index_t channels, count, chunks;
  Strides<index_t> xs;

  SP_HD void operator()(index_t i) const {
    if (i >= count) return;
    const index_t j = i % chunks;
    const Coord<index_t> o = unravel(i / chunks, channels, g.out);
    const WindowT<index_t> win = output_window(g, o.t, o.h, o.w);
    const index_t volume = win.volume();
    if (j >= volume) return;
    const index_t cols = win.w1 - win.w0, rows = win.h1 - win.h0;
    // (t, h, w) of element j, and the step of `chunks` elements split the same way
    index_t w = win.w0 + j % cols, h = win.h0 + j / cols % rows, t = win.t0 + j / cols / rows;
    const index_t dw = chunks % cols, dh = chunks / cols % rows, dt = chunks / cols / rows;
    const scalar_t* p = x + plane_offset(xs, o);
    acc_t m = static_cast<acc_t>(p[t * xs.s[2] + h * xs.s[3] + w * xs.s[4]]);
    acc_t s = 0, ws = 0;
    for (index_t k = j; k < volume; k += chunks) {
      const acc_t v = static_cast<acc_t>(p[t * xs.s[2] + h * xs.s[3] + w * xs.s[4]]);
      if (v > m) {
        const acc_t shift = m - v;
        const acc_t scale = exp_nonpositive(shift);
        ws = scale * (ws + s * shift);
        s *= scale;
        m = v;
      }
      const acc_t e = exp_nonpositive(v - m);
      s += e;
      ws += e * (v - m);
      w += dw;
      if (w >= win.w1) {
        w -= cols;
        ++h;
      }
      h += dh;
      if (h >= win.h1) {
        h -= rows;
        ++t;
      }
      t += dt;
    }
    partials[i] = m;
    partials[count + i] = s;
    partials[2 * count + i] = ws;
  }
};

// Long windows, pass 2: output i rescales the partials of its window's chunks to their common
// max M (a chunk of max m contributes exp(m - M) s and exp(m - M) (ws + s (m - M))) and writes
// y = M + WS / S (when y is not null) and lse = M + log S (when lse is not null).
template <typename scalar_t, typename acc_t, typename index_t>
struct CombineBody {
  using index_type = index_t;
  const acc_t* partials;
  scalar_t* y;
  acc_t* lse;
  GeometryT<index_t> g;
  index_t channels, count, chunks;
  Strides<index_t> ys, ls;

  SP_HD void operator()(index_t i) const {
    if (i >= count) return;
    const Coord<index_t> o = unravel(i, channels, g.out);
    const index_t volume = output_window(g, o.t, o.h, o.w).volume();
    const index_t used = volume < chunks ? volume : chunks;
    const index_t total = count * chunks;
    const acc_t* m = partials + i * chunks;
    const acc_t* s = m + total;
    const acc_t* ws = s + total;
    acc_t top = m[0];
    for (index_t j = 1; j < used; ++j) top = m[j] > top ? m[j] : top;
    acc_t sum = 0, weighted = 0;
    for (index_t j = 0; j < used; ++j) {
      const acc_t shift = m[j] - top;
      const acc_t scale = exp_nonpositive(shift);
      sum += scale * s[j];
      weighted += scale * (ws[j] + s[j] * shift);
    }
    if (y != nullptr) y[offset(ys, o)] = static_cast<scalar_t>(top + weighted / sum);
    if (lse != nullptr) lse[offset(ls, o)] = top + log_positive(sum);
  }
};

// Backward of output i when every input lies in at most one window and windows are short:
// writes the gradient of every input of its window.
template <typename scalar_t, typename acc_t, typename index_t>
struct DisjointBackwardBody {
  using index_type = index_t;
  const scalar_t* grad;
  const scalar_t* x;
  const scalar_t* y;
  scalar_t* dx;
  GeometryT<index_t> g;
  index_t channels, count;
  Strides<index_t> gs, xs, ys, ds;

  SP_HD void operator()(index_t i) const {
    if (i >= count) return;
    const Coord<index_t> o = unravel(i, channels, g.out);
    window_backward<scalar_t, acc_t, scalar_t>(x + plane_offset(xs, o), xs.s[2], xs.s[3], xs.s[4],
                                               dx + plane_offset(ds, o), ds.s[2], ds.s[3], ds.s[4],
                                               output_window(g, o.t, o.h, o.w), static_cast<acc_t>(y[offset(ys, o)]),
                                               static_cast<acc_t>(grad[offset(gs, o)]), false);
  }
};

// Backward of input i: gathers g w_i (1 + x_i - y) over the windows that contain it, with
// w_i = exp(x_i - lse) from each window's log-sum-exp; inputs in no window get 0.
template <typename scalar_t, typename acc_t, typename index_t>
struct GatherBackwardBody {
  using index_type = index_t;
  const scalar_t* grad;
  const scalar_t* x;
  const scalar_t* y;
  const acc_t* lse;
  scalar_t* dx;
  GeometryT<index_t> g;
  index_t channels, count;
  Strides<index_t> gs, xs, ys, ls, ds;

  SP_HD void operator()(index_t i) const {
    if (i >= count) return;
    Coord<index_t> p = unravel(i, channels, g.in);
    const acc_t xi = static_cast<acc_t>(x[offset(xs, p)]);
    const index_t dxo = offset(ds, p);
    index_t ot0, ot1, oh0, oh1, ow0, ow1;
    windows_containing(g, 0, p.t, &ot0, &ot1);
    windows_containing(g, 1, p.h, &oh0, &oh1);
    windows_containing(g, 2, p.w, &ow0, &ow1);
    acc_t d = 0;
    for (p.t = ot0; p.t < ot1; ++p.t)
      for (p.h = oh0; p.h < oh1; ++p.h)
        for (p.w = ow0; p.w < ow1; ++p.w)
          d += window_grad(xi, lse[offset(ls, p)], static_cast<acc_t>(y[offset(ys, p)]),
                           static_cast<acc_t>(grad[offset(gs, p)]));
    dx[dxo] = static_cast<scalar_t>(d);
  }
};

}  // namespace softpool
