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
  int n_negatives = 256;   // N (sampled_softmax)
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
  // Throws fsr::ValueError naming the first bad field and its value: the one place that
  // knows the ranges.  Without the catalogue (a model not yet fitted), n_items and the
  // checks that depend on it are skipped.
  void validate(bool with_catalogue = true) const;
};

LossKind parse_loss(const std::string& name);
std::string loss_name(LossKind kind);
Precision parse_precision(const std::string& name);
std::string precision_name(Precision p);

}  // namespace fsr
