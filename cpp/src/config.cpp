#include "fastsasrec/config.h"

#include <algorithm>
#include <cmath>

#include "fastsasrec/common.h"

namespace fsr {

void Config::validate(bool with_catalogue) const {
  FSR_REQUIRE(factors >= 1, "factors must be >= 1, got ", factors);
  FSR_REQUIRE(ffn_factors >= 0, "ffn_factors must be >= 0, got ", ffn_factors);
  FSR_REQUIRE(n_heads >= 1, "n_heads must be >= 1, got ", n_heads);
  FSR_REQUIRE(factors % n_heads == 0, "factors (", factors, ") must be divisible by n_heads (",
              n_heads, ")");
  FSR_REQUIRE(n_layers >= 0 && n_layers <= 300, "n_layers must be in 0..300, got ", n_layers);
  FSR_REQUIRE(max_seq >= 1 && max_seq <= 1 << 16, "max_seq must be in 1..65536, got ", max_seq);
  FSR_REQUIRE(dropout >= 0.f && dropout < 1.f, "dropout must be in [0, 1), got ", dropout);
  FSR_REQUIRE(batch_size >= 1, "batch_size must be >= 1, got ", batch_size);
  FSR_REQUIRE(std::isfinite(learning_rate) && learning_rate > 0.f,
              "learning_rate must be > 0, got ", learning_rate);
  FSR_REQUIRE(std::isfinite(weight_decay) && weight_decay >= 0.f,
              "weight_decay must be >= 0, got ", weight_decay);
  FSR_REQUIRE(beta1 >= 0.f && beta1 < 1.f, "beta1 must be in [0, 1), got ", beta1);
  FSR_REQUIRE(beta2 >= 0.f && beta2 < 1.f, "beta2 must be in [0, 1), got ", beta2);
  FSR_REQUIRE(adam_eps > 0.f, "adam_eps must be > 0, got ", adam_eps);
  FSR_REQUIRE(ln_eps > 0.f, "ln_eps must be > 0, got ", ln_eps);
  FSR_REQUIRE(n_negatives >= 1, "n_negatives must be >= 1, got ", n_negatives);
  FSR_REQUIRE(gbce_t >= 0.f && gbce_t <= 1.f, "gbce_t must be in [0, 1], got ", gbce_t);
  if (!with_catalogue) return;
  FSR_REQUIRE(n_items >= 1, "n_items must be >= 1, got ", n_items);
  if (loss == LossKind::SampledSoftmax || loss == LossKind::GBCE) {
    FSR_REQUIRE(n_negatives < n_items, "n_negatives (", n_negatives,
                ") must be smaller than the catalogue (", n_items, " items)");
  }
  if (loss == LossKind::BCE)
    FSR_REQUIRE(n_items >= 2, "loss='bce' needs at least 2 items, got ", n_items);
}

LossKind parse_loss(const std::string& name) {
  if (name == "bce") return LossKind::BCE;
  if (name == "sampled_softmax") return LossKind::SampledSoftmax;
  if (name == "softmax") return LossKind::Softmax;
  if (name == "gbce") return LossKind::GBCE;
  throw ValueError("loss must be one of 'bce', 'sampled_softmax', 'softmax', 'gbce', got '" + name +
                   "'");
}

float Config::gbce_beta() const {
  const double alpha = (double)n_negatives / std::max(1, n_items - 1);
  return (float)(alpha * (gbce_t * (1.0 - 1.0 / alpha) + 1.0 / alpha));
}

NegativeKind parse_negatives(const std::string& name) {
  if (name == "uniform") return NegativeKind::Uniform;
  if (name == "popularity") return NegativeKind::Popularity;
  if (name == "in_batch") return NegativeKind::InBatch;
  if (name == "mixed") return NegativeKind::Mixed;
  throw ValueError("negatives must be one of 'uniform', 'popularity', 'in_batch', 'mixed', got '" +
                   name + "'");
}

std::string negatives_name(NegativeKind kind) {
  switch (kind) {
    case NegativeKind::Uniform: return "uniform";
    case NegativeKind::Popularity: return "popularity";
    case NegativeKind::InBatch: return "in_batch";
    case NegativeKind::Mixed: return "mixed";
  }
  return "?";
}

Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::FP32;
  if (name == "bf16") return Precision::BF16;
  throw ValueError("precision must be 'fp32' or 'bf16', got '" + name + "'");
}

std::string precision_name(Precision p) { return p == Precision::BF16 ? "bf16" : "fp32"; }

std::string loss_name(LossKind kind) {
  switch (kind) {
    case LossKind::BCE: return "bce";
    case LossKind::SampledSoftmax: return "sampled_softmax";
    case LossKind::Softmax: return "softmax";
    case LossKind::GBCE: return "gbce";
  }
  return "?";
}

}  // namespace fsr
