// CPU kernels for dynamic-graph training, compiled once on the user's machine by cpu_kernels.py.
//
// Each replaces a Paddle 3.0 CPU kernel that profiles of the AISHELL Conformer training step showed
// to be far slower than its arithmetic (8 x 500 frames, 2 cores; bench/RESULTS.md): the depthwise
// convolution of the convolution module (Paddle's grouped im2col plus the transposes around it),
// layer norm's backward, a channel bias added before a ReLU on NCHW maps (Paddle's broadcast add),
// SiLU, and
// dropout (its mask drawn here instead of by NumPy and copied in).
// float32, contiguous, row-major tensors only: the Python side checks before calling.
// Reductions over rows (weight and bias gradients) sum per-thread partials in thread order, so a
// result is the same from run to run for a given thread count.
// The parallel loops run on the OpenMP runtime Paddle and MKL use (libiomp5, linked by cpu_kernels.py).

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

namespace {

void sum_partials(const std::vector<float>& partials, int threads, int64_t width, float* out) {
  for (int64_t i = 0; i < width; ++i) out[i] = 0.f;
  for (int th = 0; th < threads; ++th) {
    const float* p = partials.data() + th * width;
    for (int64_t i = 0; i < width; ++i) out[i] += p[i];
  }
}

// exp(x) for float32 in plain arithmetic that GCC vectorises (std::exp is a scalar libm call
// without -ffast-math): x = n ln2 + r, |r| <= ln2 / 2, exp(r) by its degree-6 Taylor polynomial
// (relative error < 2e-7 on that interval), times 2^n built in the exponent bits. Inputs are
// clamped to [-87, 88], where float32 exp neither overflows nor goes subnormal.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.f), 88.f);
  // round to nearest by adding and subtracting 1.5 * 2^23 (vectorises, unlike nearbyint)
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;  // ln2 in two parts
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// A 32-bit integer hash with full avalanche (Wellons' "lowbias32"); 32-bit multiplies vectorise on
// AVX2, where a 64-bit generator's would not.
inline uint32_t hash32(uint32_t v) {
  v ^= v >> 16;
  v *= 0x7feb352dU;
  v ^= v >> 15;
  v *= 0x846ca68bU;
  v ^= v >> 16;
  return v;
}

}  // namespace

// Depthwise 1-D convolution, time-major: x [B, T_in, C], w [K, C], bias [C], `pad` zero frames on
// both sides; y [B, T_out, C], T_out = T_in + 2 pad - K + 1; y[t] = bias + sum_k w[k] * x[t + k - pad].
std::vector<paddle::Tensor> DepthwiseConvForward(const paddle::Tensor& x, const paddle::Tensor& w,
                                                 const paddle::Tensor& bias, int64_t pad) {
  const int64_t B = x.shape()[0], T_in = x.shape()[1], C = x.shape()[2], K = w.shape()[0];
  const int64_t T_out = T_in + 2 * pad - K + 1;
  auto y = paddle::empty({B, T_out, C}, x.dtype(), x.place());
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* bp = bias.data<float>();
  float* yp = y.data<float>();
#pragma omp parallel for
  for (int64_t row = 0; row < B * T_out; ++row) {
    const int64_t b = row / T_out, t = row % T_out;
    float* out = yp + row * C;
    for (int64_t c = 0; c < C; ++c) out[c] = bp[c];
    for (int64_t k = 0; k < K; ++k) {
      const int64_t s = t + k - pad;
      if (s < 0 || s >= T_in) continue;
      const float* in = xp + (b * T_in + s) * C;
      const float* wk = wp + k * C;
      for (int64_t c = 0; c < C; ++c) out[c] += wk[c] * in[c];
    }
  }
  return {y};
}

// Gradients of DepthwiseConvForward: grad_x [B, T_in, C], grad_w [K, C], grad_bias [C].
std::vector<paddle::Tensor> DepthwiseConvBackward(const paddle::Tensor& x, const paddle::Tensor& w,
                                                  const paddle::Tensor& grad_y, int64_t pad) {
  const int64_t B = x.shape()[0], T_in = x.shape()[1], C = x.shape()[2], K = w.shape()[0];
  const int64_t T_out = grad_y.shape()[1];
  auto grad_x = paddle::empty({B, T_in, C}, x.dtype(), x.place());
  auto grad_w = paddle::empty({K, C}, x.dtype(), x.place());
  auto grad_bias = paddle::empty({C}, x.dtype(), x.place());
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* gp = grad_y.data<float>();
  float* gxp = grad_x.data<float>();
  const int threads = omp_get_max_threads();
  std::vector<float> partial_w(threads * K * C, 0.f), partial_b(threads * C, 0.f);
#pragma omp parallel num_threads(threads)
  {
    const int th = omp_get_thread_num();
#pragma omp for
    for (int64_t row = 0; row < B * T_in; ++row) {  // grad_x[s] = sum_k w[k] * grad_y[s - k + pad]
      const int64_t b = row / T_in, s = row % T_in;
      float* out = gxp + row * C;
      for (int64_t c = 0; c < C; ++c) out[c] = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t t = s - k + pad;
        if (t < 0 || t >= T_out) continue;
        const float* g = gp + (b * T_out + t) * C;
        const float* wk = wp + k * C;
        for (int64_t c = 0; c < C; ++c) out[c] += wk[c] * g[c];
      }
    }
    float* acc_w = partial_w.data() + th * K * C;
    float* acc_b = partial_b.data() + th * C;
#pragma omp for
    for (int64_t row = 0; row < B * T_out; ++row) {  // grad_w[k] += x[t + k - pad] * grad_y[t]
      const int64_t b = row / T_out, t = row % T_out;
      const float* g = gp + row * C;
      for (int64_t c = 0; c < C; ++c) acc_b[c] += g[c];
      for (int64_t k = 0; k < K; ++k) {
        const int64_t s = t + k - pad;
        if (s < 0 || s >= T_in) continue;
        const float* in = xp + (b * T_in + s) * C;
        float* acc = acc_w + k * C;
        for (int64_t c = 0; c < C; ++c) acc[c] += in[c] * g[c];
      }
    }
  }
  sum_partials(partial_w, threads, K * C, grad_w.data<float>());
  sum_partials(partial_b, threads, C, grad_bias.data<float>());
  return {grad_x, grad_w, grad_bias};
}

// Layer norm over the last axis: y = (x - mean) * rstd * w + b; also returns mean and rstd per row.
std::vector<paddle::Tensor> LayerNormForward(const paddle::Tensor& x, const paddle::Tensor& w,
                                             const paddle::Tensor& b, float epsilon) {
  const int64_t C = x.shape().back(), N = x.numel() / C;
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  auto mean = paddle::empty({N}, x.dtype(), x.place());
  auto rstd = paddle::empty({N}, x.dtype(), x.place());
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* bp = b.data<float>();
  float* yp = y.data<float>();
  float* mp = mean.data<float>();
  float* rp = rstd.data<float>();
#pragma omp parallel for
  for (int64_t n = 0; n < N; ++n) {
    const float* in = xp + n * C;
    float* out = yp + n * C;
    float sum = 0.f;
    for (int64_t c = 0; c < C; ++c) sum += in[c];
    const float m = sum / C;
    float var = 0.f;  // two passes: no cancellation for rows far from zero
    for (int64_t c = 0; c < C; ++c) {
      const float d = in[c] - m;
      var += d * d;
    }
    const float r = 1.f / std::sqrt(var / C + epsilon);
    for (int64_t c = 0; c < C; ++c) out[c] = (in[c] - m) * r * wp[c] + bp[c];
    mp[n] = m;
    rp[n] = r;
  }
  return {y, mean, rstd};
}

// Gradients of LayerNormForward: grad_x = rstd * (g w - mean(g w) - xhat * mean(g w xhat)),
// grad_w = sum over rows of g xhat, grad_b = sum over rows of g.
std::vector<paddle::Tensor> LayerNormBackward(const paddle::Tensor& x, const paddle::Tensor& w,
                                              const paddle::Tensor& mean, const paddle::Tensor& rstd,
                                              const paddle::Tensor& grad_y) {
  const int64_t C = x.shape().back(), N = x.numel() / C;
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  auto grad_w = paddle::empty({C}, x.dtype(), x.place());
  auto grad_b = paddle::empty({C}, x.dtype(), x.place());
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* gp = grad_y.data<float>();
  const float* mp = mean.data<float>();
  const float* rp = rstd.data<float>();
  float* gxp = grad_x.data<float>();
  const int threads = omp_get_max_threads();
  std::vector<float> partial_w(threads * C, 0.f), partial_b(threads * C, 0.f);
#pragma omp parallel num_threads(threads)
  {
    const int th = omp_get_thread_num();
    float* acc_w = partial_w.data() + th * C;
    float* acc_b = partial_b.data() + th * C;
#pragma omp for
    for (int64_t n = 0; n < N; ++n) {
      const float* in = xp + n * C;
      const float* g = gp + n * C;
      float* out = gxp + n * C;
      const float m = mp[n], r = rp[n];
      float sum_gw = 0.f, sum_gw_xhat = 0.f;
      for (int64_t c = 0; c < C; ++c) {
        const float xhat = (in[c] - m) * r, gw = g[c] * wp[c];
        sum_gw += gw;
        sum_gw_xhat += gw * xhat;
        acc_w[c] += g[c] * xhat;
        acc_b[c] += g[c];
      }
      const float mean_gw = sum_gw / C, mean_gw_xhat = sum_gw_xhat / C;
      for (int64_t c = 0; c < C; ++c) {
        const float xhat = (in[c] - m) * r;
        out[c] = r * (g[c] * wp[c] - mean_gw - xhat * mean_gw_xhat);
      }
    }
  }
  sum_partials(partial_w, threads, C, grad_w.data<float>());
  sum_partials(partial_b, threads, C, grad_b.data<float>());
  return {grad_x, grad_w, grad_b};
}

// y = relu(x + bias), the bias indexing axis 1 of x [B, C, ...] (a convolution's output).
std::vector<paddle::Tensor> BiasReluForward(const paddle::Tensor& x, const paddle::Tensor& bias) {
  const int64_t B = x.shape()[0], C = x.shape()[1], L = x.numel() / (B * C);
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  const float* xp = x.data<float>();
  const float* bp = bias.data<float>();
  float* yp = y.data<float>();
#pragma omp parallel for
  for (int64_t bc = 0; bc < B * C; ++bc) {
    const float add = bp[bc % C];
    const float* in = xp + bc * L;
    float* out = yp + bc * L;
    for (int64_t l = 0; l < L; ++l) {
      const float v = in[l] + add;
      out[l] = v > 0.f ? v : 0.f;
    }
  }
  return {y};
}

// Gradients of BiasReluForward from its output y: grad_x = grad_y where y > 0, grad_bias = its sum
// over every axis but 1.
std::vector<paddle::Tensor> BiasReluBackward(const paddle::Tensor& y, const paddle::Tensor& grad_y) {
  const int64_t B = y.shape()[0], C = y.shape()[1], L = y.numel() / (B * C);
  auto grad_x = paddle::empty(y.shape(), y.dtype(), y.place());
  auto grad_bias = paddle::empty({C}, y.dtype(), y.place());
  const float* yp = y.data<float>();
  const float* gp = grad_y.data<float>();
  float* gxp = grad_x.data<float>();
  std::vector<float> per_map(B * C);
#pragma omp parallel for
  for (int64_t bc = 0; bc < B * C; ++bc) {
    const float* out = yp + bc * L;
    const float* g = gp + bc * L;
    float* gx = gxp + bc * L;
    float sum = 0.f;
    for (int64_t l = 0; l < L; ++l) {
      const float v = out[l] > 0.f ? g[l] : 0.f;
      gx[l] = v;
      sum += v;
    }
    per_map[bc] = sum;
  }
  float* gbp = grad_bias.data<float>();
  for (int64_t c = 0; c < C; ++c) gbp[c] = 0.f;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) gbp[c] += per_map[b * C + c];
  return {grad_x, grad_bias};
}

// SiLU (swish): y = x * sigmoid(x).
std::vector<paddle::Tensor> SiluForward(const paddle::Tensor& x) {
  const int64_t n = x.numel();
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) yp[i] = xp[i] / (1.f + exp_approx(-xp[i]));
  return {y};
}

// grad_x = grad_y * s * (1 + x (1 - s)), s = sigmoid(x).
std::vector<paddle::Tensor> SiluBackward(const paddle::Tensor& x, const paddle::Tensor& grad_y) {
  const int64_t n = x.numel();
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  const float* xp = x.data<float>();
  const float* gp = grad_y.data<float>();
  float* gxp = grad_x.data<float>();
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) {
    const float s = 1.f / (1.f + exp_approx(-xp[i]));
    gxp[i] = gp[i] * s * (1.f + xp[i] * (1.f - s));
  }
  return {grad_x};
}

// Dropout: element i is kept when hash(hash(i ^ k0) ^ k1) >= threshold, the keys taken from `seed`
// (drawn from Paddle's generator by the caller, so paddle.seed decides every mask, whatever the
// thread count); y = x * keep * scale; the mask (1 byte an element) is returned for the backward.
std::vector<paddle::Tensor> DropoutForward(const paddle::Tensor& x, int64_t seed, int64_t threshold, float scale) {
  const int64_t n = x.numel();
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  auto mask = paddle::empty(x.shape(), paddle::DataType::UINT8, x.place());
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  uint8_t* mp = mask.data<uint8_t>();
  const uint32_t k0 = hash32(static_cast<uint32_t>(seed)), k1 = hash32(static_cast<uint32_t>(seed >> 32) ^ 0x9e3779b9U);
  const uint32_t limit = static_cast<uint32_t>(threshold);
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t keep = hash32(hash32(static_cast<uint32_t>(i) ^ k0) ^ k1) >= limit;
    mp[i] = keep;
    yp[i] = keep ? xp[i] * scale : 0.f;
  }
  return {y, mask};
}

// grad_x = grad_y * keep * scale.
std::vector<paddle::Tensor> DropoutBackward(const paddle::Tensor& grad_y, const paddle::Tensor& mask, float scale) {
  const int64_t n = grad_y.numel();
  auto grad_x = paddle::empty(grad_y.shape(), grad_y.dtype(), grad_y.place());
  const float* gp = grad_y.data<float>();
  const uint8_t* mp = mask.data<uint8_t>();
  float* gxp = grad_x.data<float>();
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) gxp[i] = mp[i] ? gp[i] * scale : 0.f;
  return {grad_x};
}

PD_BUILD_OP(paddle_asr_depthwise_conv_fwd)
    .Inputs({"X", "W", "Bias"})
    .Outputs({"Y"})
    .Attrs({"pad: int64_t"})
    .SetKernelFn(PD_KERNEL(DepthwiseConvForward));
PD_BUILD_OP(paddle_asr_depthwise_conv_bwd)
    .Inputs({"X", "W", "GradY"})
    .Outputs({"GradX", "GradW", "GradBias"})
    .Attrs({"pad: int64_t"})
    .SetKernelFn(PD_KERNEL(DepthwiseConvBackward));
PD_BUILD_OP(paddle_asr_layer_norm_fwd)
    .Inputs({"X", "W", "B"})
    .Outputs({"Y", "Mean", "Rstd"})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(LayerNormForward));
PD_BUILD_OP(paddle_asr_layer_norm_bwd)
    .Inputs({"X", "W", "Mean", "Rstd", "GradY"})
    .Outputs({"GradX", "GradW", "GradB"})
    .SetKernelFn(PD_KERNEL(LayerNormBackward));
PD_BUILD_OP(paddle_asr_bias_relu_fwd)
    .Inputs({"X", "Bias"})
    .Outputs({"Y"})
    .SetKernelFn(PD_KERNEL(BiasReluForward));
PD_BUILD_OP(paddle_asr_bias_relu_bwd)
    .Inputs({"Y", "GradY"})
    .Outputs({"GradX", "GradBias"})
    .SetKernelFn(PD_KERNEL(BiasReluBackward));
PD_BUILD_OP(paddle_asr_silu_fwd)
    .Inputs({"X"})
    .Outputs({"Y"})
    .SetKernelFn(PD_KERNEL(SiluForward));
PD_BUILD_OP(paddle_asr_silu_bwd)
    .Inputs({"X", "GradY"})
    .Outputs({"GradX"})
    .SetKernelFn(PD_KERNEL(SiluBackward));
PD_BUILD_OP(paddle_asr_dropout_fwd)
    .Inputs({"X"})
    .Outputs({"Y", "Mask"})
    .Attrs({"seed: int64_t", "threshold: int64_t", "scale: float"})
    .SetKernelFn(PD_KERNEL(DropoutForward));
PD_BUILD_OP(paddle_asr_dropout_bwd)
    .Inputs({"GradY", "Mask"})
    .Outputs({"GradX"})
    .Attrs({"scale: float"})
    .SetKernelFn(PD_KERNEL(DropoutBackward));
