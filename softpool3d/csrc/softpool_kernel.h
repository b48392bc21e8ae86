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

// exp(x) and log(x) as the fused CPU kernel computes them: the exp polynomial above, whose loops
// vectorise. scale() maps an argument to the unit exp() takes (here the identity).
struct PolyExp {
  template <typename acc_t>
  SP_HD static acc_t scale(acc_t x) { return x; }
  template <typename acc_t>
  SP_HD static acc_t exp(acc_t scaled) { return exp_nonpositive(scaled); }
  template <typename acc_t>
  SP_HD static acc_t log(acc_t x) { return log_positive(x); }
};

// exp(x) and log(x) as the per-index bodies compute them: in float, exp2 of the argument
// pre-scaled by log2(e) (scale(v) - scale(m) is one FFMA, then the hardware MUFU.EX2: exp2f is
// within 2 ulp) and log2; std::exp2 and std::log2 on the CPU (per_element mode), the same
// formula. float64 keeps exp and log (exact). A log-sum-exp computed as scale(m) + log(s) is then
// in the unit of scale().
struct Exp2 {
  SP_HD static float scale(float x) { return x * 1.44269504088896341f; }
  SP_HD static double scale(double x) { return x; }
  SP_HD static float exp(float scaled) {
#ifdef __CUDA_ARCH__
    return ::exp2f(scaled);
#else
    return std::exp2(scaled);
#endif
  }
  SP_HD static double exp(double scaled) { return exp_nonpositive(scaled); }
  SP_HD static float log(float x) {
#ifdef __CUDA_ARCH__
    return ::log2f(x);
#else
    return std::log2(x);
#endif
  }
  SP_HD static double log(double x) { return log_positive(x); }
};

// Division by a divisor fixed for a launch (sizes, strides, chunks), set up on the host. For the
// int32_t index path, whose operands are never negative and stay below 2^31, it multiplies by a
// magic number and shifts, as ATen's IntDivider: with s = ceil(log2 d) and
// magic = floor(2^32 (2^s - d) / d) + 1, n / d = (umulhi(n, magic) + n) >> s, exact for
// n < 2^31 (the sum stays below 2^32). The int64_t path divides.
template <typename index_t>
struct Divider;

template <>
struct Divider<int64_t> {
  int64_t divisor;

  Divider() = default;
  explicit Divider(int64_t d) : divisor(d) {}
  SP_HD int64_t div(int64_t n) const { return n / divisor; }
};

template <>
struct Divider<int32_t> {
  int32_t divisor;
  uint32_t magic;
  uint32_t shift;

  Divider() = default;
  explicit Divider(int32_t d) : divisor(d), shift(0) {
    while (shift < 31 && (uint32_t(1) << shift) < static_cast<uint32_t>(d)) ++shift;
    const uint64_t one = 1, divisor = static_cast<uint64_t>(d);
    magic = static_cast<uint32_t>(((one << 32) * ((one << shift) - divisor)) / divisor + 1);
  }
  SP_HD int32_t div(int32_t n) const {
#ifdef __CUDA_ARCH__
    const uint32_t high = __umulhi(static_cast<uint32_t>(n), magic);
#else
    const uint32_t high = static_cast<uint32_t>((static_cast<uint64_t>(static_cast<uint32_t>(n)) * magic) >> 32);
#endif
    return static_cast<int32_t>((high + static_cast<uint32_t>(n)) >> shift);
  }
};

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
  // divisions by in, out and stride (set_dividers)
  Divider<index_t> div_in[3], div_out[3], div_stride[3];
};
using Geometry = GeometryT<int64_t>;

template <typename index_t>
void set_dividers(GeometryT<index_t>& g) {
  for (int d = 0; d < 3; ++d) {
    g.div_in[d] = Divider<index_t>(g.in[d]);
    g.div_out[d] = Divider<index_t>(g.out[d]);
    g.div_stride[d] = Divider<index_t>(g.stride[d]);
  }
}

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
  set_dividers(out);
  return out;
}

// Window [begin, end) of output index o along dimension d, padded positions removed.
template <typename index_t>
SP_HD void window_range(const GeometryT<index_t>& g, int d, index_t o, index_t* begin, index_t* end) {
  if (g.adaptive) {
    *begin = g.div_out[d].div(o * g.in[d]);
    *end = g.div_out[d].div((o + 1) * g.in[d] + g.out[d] - 1);
    return;
  }
  const index_t start = o * g.stride[d] - g.pad[d];
  const index_t stop = start + g.kernel[d];
  *begin = start < 0 ? 0 : start;
  *end = stop > g.in[d] ? g.in[d] : stop;
}

// First position of output index o's window along dimension d before padding cuts it (negative
// inside the padding): the origin of its kernel box.
template <typename index_t>
SP_HD index_t window_origin(const GeometryT<index_t>& g, int d, index_t o) {
  return g.adaptive ? g.div_out[d].div(o * g.in[d]) : o * g.stride[d] - g.pad[d];
}

// Output windows [begin, end) along dimension d that contain input index i.
template <typename index_t>
SP_HD void windows_containing(const GeometryT<index_t>& g, int d, index_t i, index_t* begin, index_t* end) {
  if (g.adaptive) {
    // floor(o in / out) <= i  <=>  o <= ((i + 1) out - 1) / in;  ceil((o + 1) in / out) > i  <=>  o >= i out / in
    *begin = g.div_in[d].div(i * g.out[d]);
    *end = g.div_in[d].div((i + 1) * g.out[d] - 1) + 1;
    return;
  }
  const index_t shifted = i + g.pad[d];
  const index_t low = shifted - g.kernel[d] + 1;
  const index_t first = low <= 0 ? 0 : g.div_stride[d].div(low + g.stride[d] - 1);
  const index_t last = g.div_stride[d].div(shifted) + 1;
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

// Forward of one window of the plane `x` (strides st, sh, sw): returns y, writes the log-sum-exp
// lse = Exp::scale(m) + Exp::log(sum exp(x - m)) (in Exp's unit).
template <typename scalar_t, typename acc_t, typename index_t, typename Exp = PolyExp>
SP_HD acc_t window_forward(const scalar_t* x, index_t st, index_t sh, index_t sw, const WindowT<index_t>& win,
                           acc_t* lse) {
  const acc_t m = window_max<scalar_t, acc_t>(x, st, sh, sw, win);
  const acc_t ms = Exp::scale(m);
  acc_t sum = 0, weighted = 0;
  for (index_t t = win.t0; t < win.t1; ++t)
    for (index_t h = win.h0; h < win.h1; ++h) {
      const scalar_t* row = x + t * st + h * sh;
      for (index_t w = win.w0; w < win.w1; ++w) {
        const acc_t v = static_cast<acc_t>(row[w * sw]);
        const acc_t e = Exp::exp(Exp::scale(v) - ms);
        sum += e;
        weighted += e * (v - m);
      }
    }
  *lse = ms + Exp::log(sum);
  return m + weighted / sum;
}

// Gradient contribution g w_i (1 + x_i - y) of one window with output y and incoming gradient g
// to one of its inputs x_i of softmax weight w_i.
template <typename acc_t>
SP_HD acc_t weighted_grad(acc_t weight, acc_t xi, acc_t y, acc_t g) {
  return g * weight * (acc_t(1) + xi - y);
}


// Backward of one window: writes (or, when accumulate, adds) g w_i (1 + x_i - y) into dx
// (strides dt, dh, dw) for every input of the window, with w_i = exp(x_i - m) / sum_j exp(x_j - m).
template <typename scalar_t, typename acc_t, typename out_t, typename index_t, typename Exp = PolyExp>
SP_HD void window_backward(const scalar_t* x, index_t st, index_t sh, index_t sw, out_t* dx, index_t dt, index_t dh,
                           index_t dw, const WindowT<index_t>& win, acc_t y, acc_t g, bool accumulate) {
  const acc_t max = Exp::scale(window_max<scalar_t, acc_t>(x, st, sh, sw, win));
  acc_t sum = 0;
  for (index_t t = win.t0; t < win.t1; ++t)
    for (index_t h = win.h0; h < win.h1; ++h)
      for (index_t w = win.w0; w < win.w1; ++w)
        sum += Exp::exp(Exp::scale(static_cast<acc_t>(x[t * st + h * sh + w * sw])) - max);
  const acc_t inv_sum = acc_t(1) / sum;
  for (index_t t = win.t0; t < win.t1; ++t)
    for (index_t h = win.h0; h < win.h1; ++h) {
      const scalar_t* row = x + t * st + h * sh;
      out_t* out = dx + t * dt + h * dh;
      for (index_t w = win.w0; w < win.w1; ++w) {
        const acc_t v = static_cast<acc_t>(row[w * sw]);
        const acc_t d = weighted_grad(Exp::exp(Exp::scale(v) - max) * inv_sum, v, y, g);
        out[w * dw] = static_cast<out_t>(accumulate ? static_cast<acc_t>(out[w * dw]) + d : d);
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-index bodies. The CUDA kernels (softpool_cuda.cu) run body(i) on thread i of a grid of
// grid_threads(count) threads; the CPU's per_element mode (softpool_cpu.cpp) runs body(i) for
// every i of the same range. All index, unravel, stride and bounds code lives in the bodies, and
// each body's coord(i) is the element its thread i works on, as operator() finds it (tests read
// it through the extension's thread_coords). The bodies use Exp2 for exp and log, and fast
// divisions (Divider) by sizes fixed for the launch.
// ---------------------------------------------------------------------------------------------

// Threads per CUDA block; a grid covers grid_threads(count) indices, the last block partly idle.
constexpr int64_t kThreads = 256;

SP_HD int64_t grid_threads(int64_t count) { return (count + kThreads - 1) / kThreads * kThreads; }

// Element strides of the five dimensions (N, C, T, H, W) of one tensor.
template <typename index_t>
struct Strides {
  index_t s[5];
};

// Coordinates (n, c, t, h, w) of one element of an (N, C, T, H, W) tensor; j is a chunk (or group
// of chunks) of a window where a body splits one, else 0.
template <typename index_t>
struct Coord {
  index_t n, c, t, h, w, j;
};

// Splits a linear index over (N, C, T, H, W) sizes with W fastest, or, where the input's channel
// stride is 1 (channels_last_3d), with C fastest, so that neighbouring threads touch neighbouring
// addresses: the order of outputs (over out sizes) and of inputs (over in sizes) of every body.
template <typename index_t>
struct Unravel {
  Divider<index_t> div[4];  // the sizes fastest first: (W, H, T, C), or (C, W, H, T)
  bool channels_fastest;

  Unravel() = default;
  Unravel(index_t channels, const index_t* sizes, bool channels_fastest) : channels_fastest(channels_fastest) {
    const index_t order[2][4] = {{sizes[2], sizes[1], sizes[0], channels}, {channels, sizes[2], sizes[1], sizes[0]}};
    for (int k = 0; k < 4; ++k) div[k] = Divider<index_t>(order[channels_fastest][k]);
  }

  SP_HD Coord<index_t> operator()(index_t i) const {
    index_t v[4];
    for (int k = 0; k < 4; ++k) {
      const index_t q = div[k].div(i);
      v[k] = i - q * div[k].divisor;
      i = q;
    }
    Coord<index_t> p;
    p.n = i;
    p.j = 0;
    if (channels_fastest) {
      p.c = v[0], p.w = v[1], p.h = v[2], p.t = v[3];
    } else {
      p.w = v[0], p.h = v[1], p.t = v[2], p.c = v[3];
    }
    return p;
  }
};

template <typename index_t>
SP_HD index_t plane_offset(const Strides<index_t>& s, const Coord<index_t>& p) {
  return p.n * s.s[0] + p.c * s.s[1];
}

template <typename index_t>
SP_HD index_t offset(const Strides<index_t>& s, const Coord<index_t>& p) {
  return p.n * s.s[0] + p.c * s.s[1] + p.t * s.s[2] + p.h * s.s[3] + p.w * s.s[4];
}

// Forward of output i, one window per index: writes y (when not null) and lse (when not null,
// in Exp2's unit).
template <typename scalar_t, typename acc_t, typename index_t>
struct ForwardBody {
  using index_type = index_t;
  static constexpr const char* name = "forward";
  const scalar_t* x;
  scalar_t* y;
  acc_t* lse;
  GeometryT<index_t> g;
  index_t count;
  Unravel<index_t> outputs;
  Strides<index_t> xs, ys, ls;

  SP_HD Coord<index_t> coord(index_t i) const { return outputs(i); }

  SP_HD void operator()(index_t i) const {
    if (i >= count) return;
    const Coord<index_t> o = coord(i);
    acc_t l;
    const acc_t out = window_forward<scalar_t, acc_t, index_t, Exp2>(x + plane_offset(xs, o), xs.s[2], xs.s[3], xs.s[4],
                                                                    output_window(g, o.t, o.h, o.w), &l);
    if (y != nullptr) y[offset(ys, o)] = static_cast<scalar_t>(out);
    if (lse != nullptr) lse[offset(ls, o)] = l;
  }
};

// Partials (m, s, ws) of several parts of one window, combined: the parts' common max M, and
// S = sum exp(m - M) s and WS = sum exp(m - M) (ws + s (m - M)), over parts [begin, end) stored at
// m[k * stride], s[k * stride], ws[k * stride]. A part over no element (s = 0, m = -inf) adds 0.
template <typename acc_t, typename index_t>
SP_HD void merge_partials(const acc_t* m, const acc_t* s, const acc_t* ws, index_t begin, index_t end, index_t stride,
                          acc_t* top, acc_t* sum, acc_t* weighted) {
  acc_t mx = m[begin * stride];
  for (index_t k = begin + 1; k < end; ++k) mx = m[k * stride] > mx ? m[k * stride] : mx;
  const acc_t scaled_top = Exp2::scale(mx);
  acc_t total = 0, wsum = 0;
  for (index_t k = begin; k < end; ++k) {
    const acc_t sk = s[k * stride];
    if (!(sk > acc_t(0))) continue;
    const acc_t mk = m[k * stride];
    const acc_t scale = Exp2::exp(Exp2::scale(mk) - scaled_top);
    total += scale * sk;
    wsum += scale * (ws[k * stride] + sk * (mk - mx));
  }
  *top = mx;
  *sum = total;
  *weighted = wsum;
}

// Long windows, pass 1: index i reduces chunk j of output o's kernel box (the window before
// padding cuts it; flattened T, H, W with W fastest): the box elements j, j + chunks,
// j + 2 chunks, ... that lie in the window, first to their max m, then to s = sum exp(x - m) and
// ws = sum exp(x - m) (x - m). Outputs are numbered in the order of `outputs`; i walks j fastest
// (neighbouring threads read neighbouring W), or, where channels are fastest, c, then j, then the
// rest of o (neighbouring threads read neighbouring channels). Partials are stored chunk-major,
// partials[j * count_outputs + o] (then s and ws after count entries each), so that the combine's
// neighbouring threads, which take neighbouring outputs, read neighbouring addresses.
template <typename scalar_t, typename acc_t, typename index_t>
struct PartialBody {
  using index_type = index_t;
  static constexpr const char* name = "partial";
  const scalar_t* x;
  acc_t* partials;
  GeometryT<index_t> g;
  index_t count, count_outputs;
  Divider<index_t> chunks, channels, box_w, box_h;  // box_w, box_h: kernel[2], kernel[1]
  index_t step[3];                                   // chunks as a (T, H, W) step through the box
  index_t per_chunk, longer;  // chunk j holds per_chunk + (j < longer) box elements (volume / chunks, volume % chunks)
  Unravel<index_t> outputs;
  Strides<index_t> xs;

  // Output (linear, and its coordinates with the chunk in j) of index i.
  SP_HD Coord<index_t> locate(index_t i, index_t* linear) const {
    index_t j;
    if (outputs.channels_fastest) {
      const index_t r = channels.div(i), rest = chunks.div(r);
      j = r - rest * chunks.divisor;
      *linear = rest * channels.divisor + (i - r * channels.divisor);
    } else {
      *linear = chunks.div(i);
      j = i - *linear * chunks.divisor;
    }
    Coord<index_t> o = outputs(*linear);
    o.j = j;
    return o;
  }

  // Box position (t, h, w) of chunk j's first element.
  SP_HD void first(index_t j, index_t* t, index_t* h, index_t* w) const {
    const index_t q = box_w.div(j);
    *w = j - q * box_w.divisor;
    *t = box_h.div(q);
    *h = q - *t * box_h.divisor;
  }

  SP_HD Coord<index_t> coord(index_t i) const {
    index_t linear, t, h, w;
    Coord<index_t> o = locate(i, &linear);
    first(o.j, &t, &h, &w);
    o.t = window_origin(g, 0, o.t) + t;
    o.h = window_origin(g, 1, o.h) + h;
    o.w = window_origin(g, 2, o.w) + w;
    return o;
  }

  // Calls f(v) for every element of chunk j of the box at origin (ot, oh, ow) inside window win;
  // `cut`: the window is smaller than the box (padding, ceil_mode, adaptive), so every element is
  // checked against it; `flat`: the box's rows and planes follow each other in memory (a window
  // spanning whole H and W rows, as global pools do), so its elements are one arithmetic sequence.
  // The element offset follows the walk by additions; the trip count needs no division.
  template <bool cut, bool flat, typename F>
  SP_HD void walk(const scalar_t* p, index_t j, index_t ot, index_t oh, index_t ow, const WindowT<index_t>& win,
                  const F& f) const {
    index_t t, h, w;
    first(j, &t, &h, &w);
    index_t at = (ot + t) * xs.s[2] + (oh + h) * xs.s[3] + (ow + w) * xs.s[4];
    const index_t n = per_chunk + (j < longer ? 1 : 0);
    if (flat) {
      const index_t advance = chunks.divisor * xs.s[4];
      for (index_t k = 0; k < n; ++k, at += advance) f(static_cast<acc_t>(p[at]));
      return;
    }
    const index_t advance = step[0] * xs.s[2] + step[1] * xs.s[3] + step[2] * xs.s[4];
    const index_t wrap_w = xs.s[3] - g.kernel[2] * xs.s[4], wrap_h = xs.s[2] - g.kernel[1] * xs.s[3];
    for (index_t k = 0; k < n; ++k) {
      if (!cut || (ot + t >= win.t0 && ot + t < win.t1 && oh + h >= win.h0 && oh + h < win.h1 && ow + w >= win.w0 &&
                   ow + w < win.w1))
        f(static_cast<acc_t>(p[at]));
      at += advance;
      w += step[2];
      if (w >= g.kernel[2]) {
        w -= g.kernel[2];
        ++h;
        at += wrap_w;
      }
      h += step[1];
      if (h >= g.kernel[1]) {
        h -= g.kernel[1];
        ++t;
        at += wrap_h;
      }
      t += step[0];
    }
  }

  // Max, then sum exp(x - m) and sum exp(x - m) (x - m), of chunk j (see walk).
  template <bool cut, bool flat>
  SP_HD void reduce(const scalar_t* p, index_t j, index_t ot, index_t oh, index_t ow, const WindowT<index_t>& win,
                    acc_t* m, acc_t* s, acc_t* ws) const {
    acc_t mx = -static_cast<acc_t>(INFINITY);
    walk<cut, flat>(p, j, ot, oh, ow, win, [&](acc_t v) { mx = v > mx ? v : mx; });
    const acc_t ms = Exp2::scale(mx);
    acc_t sum = 0, weighted = 0;
    walk<cut, flat>(p, j, ot, oh, ow, win, [&](acc_t v) {
      const acc_t e = Exp2::exp(Exp2::scale(v) - ms);
      sum += e;
      weighted += e * (v - mx);
    });
    *m = mx;
    *s = sum;
    *ws = weighted;
  }

  SP_HD void operator()(index_t i) const {
    if (i >= count) return;
    index_t linear;
    const Coord<index_t> o = locate(i, &linear);
    const WindowT<index_t> win = output_window(g, o.t, o.h, o.w);
    const index_t ot = window_origin(g, 0, o.t), oh = window_origin(g, 1, o.h), ow = window_origin(g, 2, o.w);
    const scalar_t* p = x + plane_offset(xs, o);
    acc_t m, s, ws;
    const bool flat = xs.s[3] == g.kernel[2] * xs.s[4] && xs.s[2] == g.kernel[1] * xs.s[3];
    if (win.volume() != g.kernel[0] * g.kernel[1] * g.kernel[2]) reduce<true, false>(p, o.j, ot, oh, ow, win, &m, &s, &ws);
    else if (flat) reduce<false, true>(p, o.j, ot, oh, ow, win, &m, &s, &ws);
    else reduce<false, false>(p, o.j, ot, oh, ow, win, &m, &s, &ws);
    const index_t at = o.j * count_outputs + linear;
    partials[at] = m;
    partials[count + at] = s;
    partials[2 * count + at] = ws;
  }
};

// Long windows with many chunks, pass 2: index i = q * count_outputs + o merges chunks
// [q * group, (q + 1) * group) of output o (read chunk-major, neighbouring threads on neighbouring
// outputs) into one partial, stored group-major at out[q * count_outputs + o] as pass 1 stores.
template <typename acc_t, typename index_t>
struct GroupBody {
  using index_type = index_t;
  static constexpr const char* name = "group";
  const acc_t* partials;
  acc_t* out;
  index_t count, count_outputs, chunks, group;
  Divider<index_t> outputs_div;
  Unravel<index_t> outputs;

  SP_HD Coord<index_t> coord(index_t i) const {
    const index_t q = outputs_div.div(i);
    Coord<index_t> o = outputs(i - q * count_outputs);
    o.j = q;
    return o;
  }

  SP_HD void operator()(index_t i) const {
    if (i >= count) return;
    const index_t q = outputs_div.div(i), o = i - q * count_outputs;
    const index_t begin = q * group, end = begin + group < chunks ? begin + group : chunks;
    const index_t total = count_outputs * chunks;
    acc_t top, sum, weighted;
    merge_partials(partials + o, partials + total + o, partials + 2 * total + o, begin, end, count_outputs, &top, &sum,
                   &weighted);
    out[i] = top;
    out[count + i] = sum;
    out[2 * count + i] = weighted;
  }
};

// Long windows, last pass: output i merges its `parts` partials (chunks, or groups of chunks;
// stored part-major) and writes y = M + WS / S (when y is not null) and lse (Exp2's unit, when
// lse is not null).
template <typename scalar_t, typename acc_t, typename index_t>
struct CombineBody {
  using index_type = index_t;
  static constexpr const char* name = "combine";
  const acc_t* partials;
  scalar_t* y;
  acc_t* lse;
  index_t count, parts;
  Unravel<index_t> outputs;
  Strides<index_t> ys, ls;

  SP_HD Coord<index_t> coord(index_t i) const { return outputs(i); }

  SP_HD void operator()(index_t i) const {
    if (i >= count) return;
    const Coord<index_t> o = coord(i);
    const index_t total = count * parts;
    acc_t top, sum, weighted;
    merge_partials(partials + i, partials + total + i, partials + 2 * total + i, index_t(0), parts, count, &top, &sum,
                   &weighted);
    if (y != nullptr) y[offset(ys, o)] = static_cast<scalar_t>(top + weighted / sum);
    if (lse != nullptr) lse[offset(ls, o)] = Exp2::scale(top) + Exp2::log(sum);
  }
};

// Backward of output i when every input lies in at most one window and windows are short:
// writes the gradient of every input of its window.
template <typename scalar_t, typename acc_t, typename index_t>
struct DisjointBackwardBody {
  using index_type = index_t;
  static constexpr const char* name = "disjoint_backward";
  const scalar_t* grad;
  const scalar_t* x;
  const scalar_t* y;
  scalar_t* dx;
  GeometryT<index_t> g;
  index_t count;
  Unravel<index_t> outputs;
  Strides<index_t> gs, xs, ys, ds;

  SP_HD Coord<index_t> coord(index_t i) const { return outputs(i); }

  SP_HD void operator()(index_t i) const {
    if (i >= count) return;
    const Coord<index_t> o = coord(i);
    window_backward<scalar_t, acc_t, scalar_t, index_t, Exp2>(
        x + plane_offset(xs, o), xs.s[2], xs.s[3], xs.s[4], dx + plane_offset(ds, o), ds.s[2], ds.s[3], ds.s[4],
        output_window(g, o.t, o.h, o.w), static_cast<acc_t>(y[offset(ys, o)]), static_cast<acc_t>(grad[offset(gs, o)]),
        false);
  }
};

// Backward of input i: gathers g w_i (1 + x_i - y) over the windows that contain it, with
// w_i = exp(x_i - lse) from each window's log-sum-exp (Exp2's unit); inputs in no window get 0.
template <typename scalar_t, typename acc_t, typename index_t>
struct GatherBackwardBody {
  using index_type = index_t;
  static constexpr const char* name = "gather_backward";
  const scalar_t* grad;
  const scalar_t* x;
  const scalar_t* y;
  const acc_t* lse;
  scalar_t* dx;
  GeometryT<index_t> g;
  index_t count;
  Unravel<index_t> inputs;
  Strides<index_t> gs, xs, ys, ls, ds;

  SP_HD Coord<index_t> coord(index_t i) const { return inputs(i); }

  SP_HD void operator()(index_t i) const {
    if (i >= count) return;
    Coord<index_t> p = coord(i);
    const acc_t xi = static_cast<acc_t>(x[offset(xs, p)]);
    const acc_t xi_scaled = Exp2::scale(xi);
    const index_t dxo = offset(ds, p);
    index_t ot0, ot1, oh0, oh1, ow0, ow1;
    windows_containing(g, 0, p.t, &ot0, &ot1);
    windows_containing(g, 1, p.h, &oh0, &oh1);
    windows_containing(g, 2, p.w, &ow0, &ow1);
    acc_t d = 0;
    for (p.t = ot0; p.t < ot1; ++p.t)
      for (p.h = oh0; p.h < oh1; ++p.h)
        for (p.w = ow0; p.w < ow1; ++p.w)
          d += weighted_grad(Exp2::exp(xi_scaled - lse[offset(ls, p)]), xi, static_cast<acc_t>(y[offset(ys, p)]),
                             static_cast<acc_t>(grad[offset(gs, p)]));
    dx[dxo] = static_cast<scalar_t>(d);
  }
};

}  // namespace softpool
