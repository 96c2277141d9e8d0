// Linear layer (projections and the feed-forward layers), W stored (in, out).
//   forward : out(R,O) = in(R,I) W(I,O) + b(O), then ReLU when relu, then dropout_p
//             (counter r*O+o of key, the masks of dropout_forward over R*O)
//   backward: din(R,I) (= or +=, skipped when null) = dout W^T
//             dW(I,O) += in^T dout;   db(O) += column sums of dout
// The ReLU's own backward is applied by the caller (dropout_backward with relu_out).
// ctx.precision BF16 computes the three products on bfloat16 operands (rounded to nearest
// even, sums in fp32, as a GPU's bf16 matrix units do); the bias, the ReLU and db stay fp32.
// Each op is one parallel region, rows split, every product of a block on its own thread
// (BlockGemm: fp32 in gemm_rows's AVX-512 kernels, or sgemm; bf16 in its kernel); where
// bf16 has no kernel, the products go
// through gemm_bf16 (rounded copies, then sgemm), a region each.
#include <algorithm>

#include "cpu/keep_bits.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "fastsasrec/rng.h"

namespace fsr::cpu {

namespace {
constexpr int kChunk = 192;  // rows of out a forward thread finishes at a time (48 KiB at width 64)

// out's rows [r0, r1) after their product, while they are in cache: the bias (the product
// + b, one rounding) and the ReLU in one pass, then dropout.
inline void epilogue(float* out, const float* b, int r0, int r1, int O, bool relu, float p, uint64_t key,
                     uint32_t thr, float inv_keep) {
  float* o = out + (size_t)r0 * O;
  const size_t n = (size_t)(r1 - r0) * O, e0 = (size_t)r0 * O;
  for (int r = 0; r < r1 - r0; ++r) {
    float* row = o + (size_t)r * O;
    if (relu)
      for (int c = 0; c < O; ++c) row[c] = std::max(row[c] + b[c], 0.f);
    else
      for (int c = 0; c < O; ++c) row[c] += b[c];
  }
  if (p > 0.f) {
    scale_kept(o, o, n, key, thr, e0, inv_keep);
  }
}
}  // namespace

// Each thread writes its block's product (beta = 0: C is never read), then adds the bias
// and applies the ReLU in one pass (the sum + b, one rounding), and the dropout.
void linear_forward(const Context& ctx, float* out, const float* in, const float* W, const float* b, int R, int I,
                    int O, bool relu, float p, uint64_t key) {
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  const int nb = gemm_blocks(ctx.threads, R, 2.0 * R * I * O);
  const BlockGemm mm("linear_forward", ctx, nb);
  if (!mm.usable()) gemm_bf16(ctx.threads, false, false, R, O, I, 1.f, in, I, W, O, 0.f, out, O);
  parallel_for(ctx.threads, nb, [&](int t) {
    const int t0 = (int)((long)R * t / nb), t1 = (int)((long)R * (t + 1) / nb);
    // The block's rows kChunk at a time, so that each chunk of out stays in cache from the
    // bias through the product to the epilogue.
    for (int r0 = t0; r0 < t1; r0 += kChunk) {
      const int r1 = std::min(t1, r0 + kChunk);
      if (mm.usable())  // (else the product is already in out)
        mm(t, false, false, r1 - r0, O, I, 1.f, in + (size_t)r0 * I, I, W, O, 0.f, out + (size_t)r0 * O, O);
      epilogue(out, b, r0, r1, O, relu, p, key, thr, inv_keep);
    }
  });
}

// Rows split: each thread computes its rows of din (dout W^T), then, while those rows of
// dout are in cache, its partial dW (in^T dout over its rows) and db in scratch; the
// partials are then added in block order (results depend only on the thread count).
void linear_backward(const Context& ctx, float* din, float* dW, float* db, const float* dout, const float* in,
                     const float* W, int R, int I, int O, bool accumulate) {
  const int nb = gemm_blocks(ctx.threads, R, 2.0 * R * I * O);
  const BlockGemm mm("linear_backward", ctx, nb);
  if (!mm.usable()) {  // bf16 without its kernel: a region per product
    if (din) gemm_bf16(ctx.threads, false, true, R, I, O, 1.f, dout, O, W, O, accumulate ? 1.f : 0.f, din, I);
    gemm_bf16(ctx.threads, true, false, I, O, R, 1.f, in, I, dout, O, 1.f, dW, O);
    for (int r = 0; r < R; ++r) {
      const float* d = dout + (size_t)r * O;
      for (int c = 0; c < O; ++c) db[c] += d[c];
    }
    return;
  }
  const size_t part = (size_t)(I + 1) * O;  // a block's dW, then its db
  const ThreadScratch scratch("linear_backward", nb > 1 ? nb : 1, nb > 1 ? part : 0);
  // W^T (O x I), so that din's product reads its right operand by rows (gemm_rows' form;
  // the bf16 kernel packs either form to the same panels).
  const ThreadScratch wt("linear_backward", 1, din ? (size_t)O * I : 0);
  float* const Wt = wt.at(0);
  if (din)
    for (int i = 0; i < I; ++i)
      for (int o = 0; o < O; ++o) Wt[(size_t)o * I + i] = W[(size_t)i * O + o];
  parallel_for(ctx.threads, nb, [&](int t) {
    const int r0 = (int)((long)R * t / nb), r1 = (int)((long)R * (t + 1) / nb);
    const float* d = dout + (size_t)r0 * O;
    if (din)
      mm(t, false, false, r1 - r0, I, O, 1.f, d, O, Wt, I, accumulate ? 1.f : 0.f, din + (size_t)r0 * I, I);
    float* pW = nb > 1 ? scratch.at(t) : dW;
    float* pb = nb > 1 ? pW + (size_t)I * O : db;
    mm(t, true, false, I, O, r1 - r0, 1.f, in + (size_t)r0 * I, I, d, O, nb > 1 ? 0.f : 1.f, pW, O);
    if (nb > 1)
      for (int c = 0; c < O; ++c) pb[c] = 0.f;
    for (int r = r0; r < r1; ++r) {
      const float* dr = dout + (size_t)r * O;
#pragma omp simd
      for (int c = 0; c < O; ++c) pb[c] += dr[c];
    }
  });
  if (nb <= 1) return;
  for (int t = 0; t < nb; ++t) {  // the partials in block order
    const float* pW = scratch.at(t);
    for (size_t e = 0; e < (size_t)I * O; ++e) dW[e] += pW[e];
    for (int c = 0; c < O; ++c) db[c] += pW[(size_t)I * O + c];
  }
}

}  // namespace fsr::cpu
