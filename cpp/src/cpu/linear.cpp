// Linear layer (projections and the feed-forward layers), W stored (in, out).
//   forward : out(R,O) = in(R,I) W(I,O) + b(O), then ReLU when relu, then dropout_p
//             (counter r*O+o of key, the masks of dropout_forward over R*O)
//   backward: din(R,I) (= or +=, skipped when null) = dout W^T
//             dW(I,O) += in^T dout;   db(O) += column sums of dout
// The ReLU's own backward is applied by the caller (dropout_backward with relu_out).
// ctx.precision BF16 rounds each product's two operands to bfloat16 (copies in per-thread
// scratch) and sums the products in fp32, as a GPU's bf16 matrix units do; the bias, the
// ReLU and db stay fp32.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "fastsasrec/rng.h"

namespace fsr::cpu {

void round_bf16(int nt, float* dst, const float* src, size_t n) {
  const int nb = (int)std::min<size_t>(64, (n + 65535) / 65536);
  parallel_for(nt, std::max(nb, 1), [&](int t) {
    const size_t e0 = n * t / std::max(nb, 1), e1 = n * (t + 1) / std::max(nb, 1);
    for (size_t e = e0; e < e1; ++e) {
      uint32_t u;
      std::memcpy(&u, src + e, 4);
      if ((u & 0x7fffffffu) > 0x7f800000u)
        u |= 0x00400000u;  // NaN: keep it a (quiet) NaN
      else
        u += 0x7fffu + ((u >> 16) & 1u);  // to nearest, ties to even (may round to inf)
      u &= 0xffff0000u;
      std::memcpy(dst + e, &u, 4);
    }
  });
}

namespace {
// The operand as the product will read it: itself, or its bf16 rounding in `scratch`.
const float* operand(const Context& ctx, const float* x, size_t n, std::vector<float>& scratch) {
  if (ctx.precision == Precision::FP32) return x;
  if (scratch.size() < n) scratch.resize(n);
  round_bf16(ctx.threads, scratch.data(), x, n);
  return scratch.data();
}
}  // namespace

// One parallel region per product: each thread fills its block of rows with the bias,
// accumulates its GEMM onto it (beta = 1) and applies the ReLU and the dropout while the
// block is in cache.
void linear_forward(const Context& ctx, float* out, const float* in_, const float* W_, const float* b, int R, int I,
                    int O, bool relu, float p, uint64_t key) {
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  thread_local std::vector<float> s_in, s_w;
  const float* in = operand(ctx, in_, (size_t)R * I, s_in);
  const float* W = operand(ctx, W_, (size_t)I * O, s_w);
  const int nb = gemm_blocks(ctx.threads, R, 2.0 * R * I * O);
  parallel_for(ctx.threads, nb, [&](int t) {
    const int r0 = (int)((long)R * t / nb), r1 = (int)((long)R * (t + 1) / nb);
    float* o = out + (size_t)r0 * O;
    for (int r = r0; r < r1; ++r)
      for (int c = 0; c < O; ++c) out[(size_t)r * O + c] = b[c];
    gemm_serial(false, false, r1 - r0, O, I, 1.f, in + (size_t)r0 * I, I, W, O, 1.f, o, O);
    const size_t n = (size_t)(r1 - r0) * O, e0 = (size_t)r0 * O;
    if (relu)
      for (size_t e = 0; e < n; ++e) o[e] = std::max(o[e], 0.f);
    if (p > 0.f)
      for (size_t e = 0; e < n; ++e) o[e] *= keep_scale(key, e0 + e, thr, inv_keep);
  });
}

// din in one region (rows split); dW and db in another (columns of dout split: each
// thread owns whole columns of dW and db, summing over all rows in order).
void linear_backward(const Context& ctx, float* din, float* dW, float* db, const float* dout_, const float* in_,
                     const float* W_, int R, int I, int O, bool accumulate) {
  thread_local std::vector<float> s_dout, s_in, s_w;
  const float* dout = operand(ctx, dout_, (size_t)R * O, s_dout);
  if (din) {
    const float* W = operand(ctx, W_, (size_t)I * O, s_w);
    gemm(ctx.threads, false, true, R, I, O, 1.f, dout, O, W, O, accumulate ? 1.f : 0.f, din, I);
  }
  const float* in = operand(ctx, in_, (size_t)R * I, s_in);
  const int nb = gemm_blocks(ctx.threads, O, 2.0 * R * I * O);
  parallel_for(ctx.threads, nb, [&](int t) {
    const int c0 = (int)((long)O * t / nb), c1 = (int)((long)O * (t + 1) / nb);
    gemm_serial(true, false, I, c1 - c0, R, 1.f, in, I, dout + c0, O, 1.f, dW + c0, O);
    for (int r = 0; r < R; ++r) {
      const float* d = dout_ + (size_t)r * O;  // db: the fp32 gradient
      for (int c = c0; c < c1; ++c) db[c] += d[c];
    }
  });
}

}  // namespace fsr::cpu
