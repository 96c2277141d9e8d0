// Model and training configuration: the fields are the table config.def.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fastsasrec/backend.h"

namespace fsr {

// A field's valid values (config.def's range column).
struct Range {
  enum Kind { Any, AtLeast, Above, Closed, HalfOpen };
  Kind kind;
  double lo, hi;
  static constexpr Range any() { return {Any, 0, 0}; }
  static constexpr Range at_least(double lo) { return {AtLeast, lo, 0}; }
  static constexpr Range above(double lo) { return {Above, lo, 0}; }
  static constexpr Range in(double lo, double hi) { return {Closed, lo, hi}; }
  static constexpr Range in_half_open(double lo, double hi) { return {HalfOpen, lo, hi}; }
  // What a message says after "must be ": ">= 1", "> 0", "in 0..300" (integral) or
  // "in [0, 1]", "in [0, 1)"; "" for any().
  std::string text(bool integral) const;
};

// The fields, their types and defaults: config.def.
struct Config {
#define FSR_CONFIG(type, name, default_value, range, doc) type name = default_value;
#include "fastsasrec/config.def"
#undef FSR_CONFIG

  int ffn() const { return ffn_factors > 0 ? ffn_factors : factors; }
  int head_dim() const { return factors / n_heads; }
  // gbce's exponent on the positive's probability: beta = alpha (t (1 - 1/alpha) + 1/alpha)
  // with alpha = N / (V - 1), the share of the other items each positive is scored against.
  float gbce_beta() const;
  // The sampled softmax's logits carry the log of the sampling probability (null otherwise).
  bool uses_logq() const {
    return loss == LossKind::SampledSoftmax && logq_correction && negatives != NegativeKind::Uniform;
  }
  // Throws fsr::ValueError naming the first bad field and its value: each field in its
  // range (config.def), then the checks between fields.  Without the catalogue (a model
  // not yet fitted), n_items and the checks that depend on it are skipped.
  void validate(bool with_catalogue = true) const;
};

// The names of an enum field's values, in the enum's order (index = value): how the
// config reads and writes them.  For LossKind, NegativeKind, Precision and FeaturePooling.
template <typename E>
const std::vector<std::string>& names();
// The value named `name`, or fsr::ValueError: "<field> must be one of 'a', 'b', got 'x'".
template <typename E>
E parse_name(const char* field, const std::string& name);
template <typename E>
std::string name_of(E value);

}  // namespace fsr
