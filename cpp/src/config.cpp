#include "fastsasrec/config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string_view>
#include <type_traits>

#include "fastsasrec/common.h"

namespace fsr {

namespace {

std::string bound(double x, bool integral) {
  if (integral) return std::to_string((long long)x);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

// One field in its range (a float also finite), or fsr::ValueError naming it and the value.
template <typename T>
void check_field(const char* name, T v, const Range& r) {
  if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
    if (r.kind == Range::Any) return;
    const double x = (double)v;
    bool ok = std::isfinite(x);
    switch (r.kind) {
      case Range::Any: break;
      case Range::AtLeast: ok = ok && x >= r.lo; break;
      case Range::Above: ok = ok && x > r.lo; break;
      case Range::Closed: ok = ok && x >= r.lo && x <= r.hi; break;
      case Range::HalfOpen: ok = ok && x >= r.lo && x < r.hi; break;
    }
    FSR_REQUIRE(ok, name, " must be ", r.text(std::is_integral_v<T>), ", got ", v);
  }
}

}  // namespace

std::string Range::text(bool integral) const {
  switch (kind) {
    case Any: return "";
    case AtLeast: return ">= " + bound(lo, integral);
    case Above: return "> " + bound(lo, integral);
    case Closed:
      return integral ? "in " + bound(lo, true) + ".." + bound(hi, true)
                      : "in [" + bound(lo, false) + ", " + bound(hi, false) + "]";
    case HalfOpen: return "in [" + bound(lo, integral) + ", " + bound(hi, integral) + ")";
  }
  return "";
}

void Config::validate(bool with_catalogue) const {
  // Each field in its range (config.def), in the table's order; n_items (the catalogue's
  // size) only once the catalogue is known.
#define FSR_CONFIG(type, name, default_value, range, doc) \
  if (with_catalogue || std::string_view(#name) != "n_items") check_field(#name, name, range);
#include "fastsasrec/config.def"
#undef FSR_CONFIG

  // ---- between fields
  // The heads split the width evenly.
  FSR_REQUIRE(factors % n_heads == 0, "factors (", factors, ") must be divisible by n_heads (",
              n_heads, ")");
  // Id dropout leaves an item to its features: without features it would leave nothing.
  FSR_REQUIRE(id_dropout == 0.f || n_feature_values > 0, "id_dropout (", id_dropout,
              ") needs item features, but n_feature_values = ", n_feature_values);
  if (!with_catalogue) return;
  // The sampled losses draw their negatives from the other items of the catalogue.
  if (loss == LossKind::SampledSoftmax || loss == LossKind::GBCE) {
    FSR_REQUIRE(n_negatives < n_items, "n_negatives (", n_negatives,
                ") must be smaller than the catalogue (", n_items, " items)");
  }
  // bce draws one negative other than the target.
  if (loss == LossKind::BCE)
    FSR_REQUIRE(n_items >= 2, "loss='bce' needs at least 2 items, got ", n_items);
}

float Config::gbce_beta() const {
  const double alpha = (double)n_negatives / std::max(1, n_items - 1);
  return (float)(alpha * (gbce_t * (1.0 - 1.0 / alpha) + 1.0 / alpha));
}

// ---- the names of the enum fields' values, index = the enum's value (backend.h)
template <>
const std::vector<std::string>& names<LossKind>() {
  static const std::vector<std::string> n = {"bce", "sampled_softmax", "softmax", "gbce"};
  return n;
}
template <>
const std::vector<std::string>& names<NegativeKind>() {
  static const std::vector<std::string> n = {"uniform", "popularity", "in_batch", "mixed"};
  return n;
}
template <>
const std::vector<std::string>& names<Precision>() {
  static const std::vector<std::string> n = {"fp32", "bf16"};
  return n;
}
template <>
const std::vector<std::string>& names<FeaturePooling>() {
  static const std::vector<std::string> n = {"sum", "mean"};
  return n;
}

template <typename E>
E parse_name(const char* field, const std::string& name) {
  const auto& n = names<E>();
  for (size_t i = 0; i < n.size(); ++i)
    if (n[i] == name) return static_cast<E>(i);
  std::string list;
  for (size_t i = 0; i < n.size(); ++i) list += (i ? ", '" : "'") + n[i] + "'";
  throw ValueError(detail::cat(field, " must be one of ", list, ", got '", name, "'"));
}

template <typename E>
std::string name_of(E value) {
  const auto& n = names<E>();
  const size_t i = static_cast<size_t>(value);
  return i < n.size() ? n[i] : "?";
}

template LossKind parse_name<LossKind>(const char*, const std::string&);
template NegativeKind parse_name<NegativeKind>(const char*, const std::string&);
template Precision parse_name<Precision>(const char*, const std::string&);
template FeaturePooling parse_name<FeaturePooling>(const char*, const std::string&);
template std::string name_of<LossKind>(LossKind);
template std::string name_of<NegativeKind>(NegativeKind);
template std::string name_of<Precision>(Precision);
template std::string name_of<FeaturePooling>(FeaturePooling);

}  // namespace fsr
