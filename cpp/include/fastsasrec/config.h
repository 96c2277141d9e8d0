// Model and training configuration.
#pragma once

#include <cstdint>
#include <string>

#include "fastsasrec/backend.h"

namespace fsr {

struct Config {
  int n_items = 0;         // V: catalogue size (internal ids 1..V; 0 = padding)
  int factors = 64;        // C
  int ffn_factors = 0;     // F: feed-forward width; 0 means C (the paper's block)
  int n_heads = 1;         // H (must divide C)
  int n_layers = 2;        // L
  int max_seq = 50;        // T
  float dropout = 0.2f;
  LossKind loss = LossKind::SampledSoftmax;
  int n_negatives = 256;   // N (sampled_softmax: shared by the batch; gbce: per row)
  NegativeKind negatives = NegativeKind::Uniform;  // sampled_softmax's sampler
  bool logq_correction = false;  // sampled_softmax: subtract log q(item) from each logit
  float gbce_t = 0.75f;    // gbce's calibration t in [0, 1] (Petrov & Macdonald, 2023)
  float learning_rate = 1e-3f;
  float weight_decay = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.98f;
  float adam_eps = 1e-8f;
  float ln_eps = 1e-8f;
  int batch_size = 128;    // B: sequences per batch
  Precision precision = Precision::FP32;
  uint64_t seed = 42;

  int ffn() const { return ffn_factors > 0 ? ffn_factors : factors; }
  int head_dim() const { return factors / n_heads; }
  // gbce's exponent on the positive's probability: beta = alpha (t (1 - 1/alpha) + 1/alpha)
  // with alpha = N / (V - 1), the share of the other items each positive is scored against.
  float gbce_beta() const;
  // The sampled softmax's logits carry the log of the sampling probability (null otherwise).
  bool uses_logq() const {
    return loss == LossKind::SampledSoftmax && logq_correction && negatives != NegativeKind::Uniform;
  }
  // Throws fsr::ValueError naming the first bad field and its value: the one place that
  // knows the ranges.  Without the catalogue (a model not yet fitted), n_items and the
  // checks that depend on it are skipped.
  void validate(bool with_catalogue = true) const;
};

LossKind parse_loss(const std::string& name);
std::string loss_name(LossKind kind);
NegativeKind parse_negatives(const std::string& name);
std::string negatives_name(NegativeKind kind);
Precision parse_precision(const std::string& name);
std::string precision_name(Precision p);

}  // namespace fsr
