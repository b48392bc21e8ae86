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

// One pooled 3-D problem: input and output sizes (T, H, W), kernel, stride and padding.
struct Geometry {
  int64_t in[3];
  int64_t out[3];
  int64_t kernel[3];
  int64_t stride[3];
  int64_t pad[3];
};

// Window [begin, end) of output index o along dimension d, padded positions removed.
SP_HD void window_range(const Geometry& g, int d, int64_t o, int64_t* begin, int64_t* end) {
  const int64_t start = o * g.stride[d] - g.pad[d];
  const int64_t stop = start + g.kernel[d];
  *begin = start < 0 ? 0 : start;
  *end = stop > g.in[d] ? g.in[d] : stop;
}

// Output windows [begin, end) along dimension d that contain input index i.
SP_HD void windows_containing(const Geometry& g, int d, int64_t i, int64_t* begin, int64_t* end) {
  const int64_t shifted = i + g.pad[d];
  const int64_t low = shifted - g.kernel[d] + 1;
  const int64_t first = low <= 0 ? 0 : (low + g.stride[d] - 1) / g.stride[d];
  const int64_t last = shifted / g.stride[d] + 1;
  *begin = first;
  *end = last > g.out[d] ? g.out[d] : last;
}

// Input box [t0, t1) x [h0, h1) x [w0, w1) of one output window.
struct Window {
  int64_t t0, t1, h0, h1, w0, w1;
};

SP_HD Window output_window(const Geometry& g, int64_t ot, int64_t oh, int64_t ow) {
  Window w;
  window_range(g, 0, ot, &w.t0, &w.t1);
  window_range(g, 1, oh, &w.h0, &w.h1);
  window_range(g, 2, ow, &w.w0, &w.w1);
  return w;
}

// Max of one window of the plane `x` (strides st, sh, sw).
template <typename scalar_t, typename acc_t>
SP_HD acc_t window_max(const scalar_t* x, int64_t st, int64_t sh, int64_t sw, const Window& win) {
  acc_t m = static_cast<acc_t>(x[win.t0 * st + win.h0 * sh + win.w0 * sw]);
  for (int64_t t = win.t0; t < win.t1; ++t)
    for (int64_t h = win.h0; h < win.h1; ++h) {
      const scalar_t* row = x + t * st + h * sh;
      for (int64_t w = win.w0; w < win.w1; ++w) {
        const acc_t v = static_cast<acc_t>(row[w * sw]);
        m = v > m ? v : m;
      }
    }
  return m;
}

// Forward of one window of the plane `x` (strides st, sh, sw): returns y, writes lse.
template <typename scalar_t, typename acc_t>
SP_HD acc_t window_forward(const scalar_t* x, int64_t st, int64_t sh, int64_t sw, const Window& win, acc_t* lse) {
  const acc_t m = window_max<scalar_t, acc_t>(x, st, sh, sw, win);
  acc_t sum = 0, weighted = 0;
  for (int64_t t = win.t0; t < win.t1; ++t)
    for (int64_t h = win.h0; h < win.h1; ++h) {
      const scalar_t* row = x + t * st + h * sh;
      for (int64_t w = win.w0; w < win.w1; ++w) {
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

// Backward for one input element (t, h, w): gathers over the windows that contain it.
// lse, y and g point at the (n, c) output plane, with (T, H, W) strides lse_strides, out_strides
// and grad_strides.
template <typename scalar_t, typename acc_t>
SP_HD acc_t input_backward(const Geometry& geo, acc_t xi, int64_t t, int64_t h, int64_t w, const acc_t* lse,
                           const scalar_t* y, const scalar_t* g, const int64_t* lse_strides,
                           const int64_t* out_strides, const int64_t* grad_strides) {
  int64_t ot0, ot1, oh0, oh1, ow0, ow1;
  windows_containing(geo, 0, t, &ot0, &ot1);
  windows_containing(geo, 1, h, &oh0, &oh1);
  windows_containing(geo, 2, w, &ow0, &ow1);
  acc_t dx = 0;
  for (int64_t ot = ot0; ot < ot1; ++ot)
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const acc_t l = lse[ot * lse_strides[0] + oh * lse_strides[1] + ow * lse_strides[2]];
        const acc_t yv = static_cast<acc_t>(y[ot * out_strides[0] + oh * out_strides[1] + ow * out_strides[2]]);
        const acc_t gv = static_cast<acc_t>(g[ot * grad_strides[0] + oh * grad_strides[1] + ow * grad_strides[2]]);
        dx += window_grad(xi, l, yv, gv);
      }
  return dx;
}

// Backward of one window: writes (or, when accumulate, adds) g w_i (1 + x_i - y) into dx
// (strides dt, dh, dw) for every input of the window, with w_i = exp(x_i - m) / sum_j exp(x_j - m).
template <typename scalar_t, typename acc_t, typename out_t>
SP_HD void window_backward(const scalar_t* x, int64_t st, int64_t sh, int64_t sw, out_t* dx, int64_t dt, int64_t dh,
                           int64_t dw, const Window& win, acc_t y, acc_t g, bool accumulate) {
  const acc_t max = window_max<scalar_t, acc_t>(x, st, sh, sw, win);
  acc_t sum = 0;
  for (int64_t t = win.t0; t < win.t1; ++t)
    for (int64_t h = win.h0; h < win.h1; ++h)
      for (int64_t w = win.w0; w < win.w1; ++w)
        sum += exp_nonpositive(static_cast<acc_t>(x[t * st + h * sh + w * sw]) - max);
  const acc_t inv_sum = acc_t(1) / sum;
  for (int64_t t = win.t0; t < win.t1; ++t)
    for (int64_t h = win.h0; h < win.h1; ++h) {
      const scalar_t* row = x + t * st + h * sh;
      out_t* out = dx + t * dt + h * dh;
      for (int64_t w = win.w0; w < win.w1; ++w) {
        const acc_t v = static_cast<acc_t>(row[w * sw]);
        const acc_t d = weighted_grad(exp_nonpositive(v - max) * inv_sum, v, y, g);
        out[w * dw] = static_cast<out_t>(accumulate ? static_cast<acc_t>(out[w * dw]) + d : d);
      }
    }
}

}  // namespace softpool
