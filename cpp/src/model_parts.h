// The model's private parts, shared by model.cpp, train.cpp and infer.cpp: backend
// buffers, the parameter table, the activation arena.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "fastsasrec/backend.h"
#include "fastsasrec/model.h"

namespace fsr {

// Backend memory owned by one object: released when it is destroyed (also when a later
// allocation of its owner's constructor throws).  grow() reallocates only to grow.
class Model::Buffer {
 public:
  explicit Buffer(Backend& be, size_t bytes = 0) : be_(&be) {
    if (bytes) grow(bytes);
  }
  ~Buffer() {
    if (p_) be_->release(p_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* grow(size_t bytes) {
    if (bytes > cap_) {
      if (p_) be_->release(p_);
      p_ = nullptr;
      cap_ = 0;
      p_ = be_->alloc(bytes);
      cap_ = bytes;
    }
    return p_;
  }
  void* get() const { return p_; }
  float* f() const { return static_cast<float*>(p_); }

 private:
  Backend* be_;
  void* p_ = nullptr;
  size_t cap_ = 0;
};

// ---- the parameter table: one row per tensor of a block, in the order of the enum.
// Shapes are in the dimensions of the config; the arena's order (which is also the model
// file's) is: the decayed tensors first, so AdamW's weight decay is one prefix -- the
// item and position embeddings, then each layer's decayed tensors in table order --, then
// each layer's other tensors in table order, then the final norm.  A model with item
// features (n_feature_values > 0) adds their table after all of these (kFeatureEmb): a
// model without them keeps this layout, and its initialisation, exactly.  That table is
// weight-decayed too, by an AdamW pass of its own (the decayed prefix stays as it is).
enum class Dim { One, C, C2, F, V1, T, NF };  // 1, C, 2C, F, V + 1, T, n_feature_values
using Init = ParamInit;
struct ParamSpec {
  const char* name;
  Dim rows, cols;  // cols One: a vector of `rows` entries
  bool decay;
  Init init;
};

enum LayerParam : int {
  kLn1G, kLn1B, kWq, kBq, kWkv, kBkv, kWo, kBo, kLn2G, kLn2B, kW1, kB1, kW2, kB2, kLayerParams
};
inline constexpr ParamSpec kLayerTable[kLayerParams] = {
    {"ln1.weight", Dim::C, Dim::One, false, Init::Ones},
    {"ln1.bias", Dim::C, Dim::One, false, Init::Zeros},
    {"attn_q.weight", Dim::C, Dim::C, true, Init::Xavier},
    {"attn_q.bias", Dim::C, Dim::One, false, Init::Zeros},
    {"attn_kv.weight", Dim::C, Dim::C2, true, Init::XavierPaired},
    {"attn_kv.bias", Dim::C2, Dim::One, false, Init::Zeros},
    {"attn_out.weight", Dim::C, Dim::C, true, Init::Xavier},
    {"attn_out.bias", Dim::C, Dim::One, false, Init::Zeros},
    {"ln2.weight", Dim::C, Dim::One, false, Init::Ones},
    {"ln2.bias", Dim::C, Dim::One, false, Init::Zeros},
    {"ffn1.weight", Dim::C, Dim::F, true, Init::Xavier},
    {"ffn1.bias", Dim::F, Dim::One, false, Init::Zeros},
    {"ffn2.weight", Dim::F, Dim::C, true, Init::Xavier},
    {"ffn2.bias", Dim::C, Dim::One, false, Init::Zeros},
};
enum GlobalParam : int { kItemEmb, kPosEmb, kLnfG, kLnfB, kGlobalParams };
inline constexpr ParamSpec kGlobalTable[kGlobalParams] = {
    {"item_emb", Dim::V1, Dim::C, true, Init::ItemEmb},
    {"pos_emb", Dim::T, Dim::C, true, Init::Xavier},
    {"final_ln.weight", Dim::C, Dim::One, false, Init::Ones},
    {"final_ln.bias", Dim::C, Dim::One, false, Init::Zeros},
};
// The feature values' embeddings (only with n_feature_values > 0), last in the arena.  They
// start at zero: an item starts as its id embedding alone, and its features add what
// training finds in them (Xavier over (NF, C) starts them several times larger than the
// item embeddings, whose fan-in is the catalogue: measured worse, BENCHMARKS.md).
inline constexpr ParamSpec kFeatureEmb = {"F", Dim::NF, Dim::C, true, Init::Zeros};

// The pointers of one block's tensors in one arena (parameters or gradients).
struct Model::Layer {
  float* t[kLayerParams];
  float* operator[](LayerParam i) const { return t[i]; }
};

// Activation arena.  Per layer: everything the backward needs; plus scratch for the
// backward and the loss.  Sized for (R rows, B sequences), allocated once per shape.
struct Model::Acts {
  struct L {
    float *x, *q, *mean1, *rstd1, *Qp, *KV, *att, *lse, *x1, *y, *mean2, *rstd2, *f1;
    float* saved = nullptr;  // attention's probabilities for its backward (null: recomputed)
  };
  std::vector<L> layers;
  float *xL = nullptr, *h = nullptr, *meanf = nullptr, *rstdf = nullptr, *tmp = nullptr;
  // backward scratch
  float *dx = nullptr, *dx1 = nullptr, *dtmp = nullptr, *df1 = nullptr, *datt = nullptr,
        *dQp = nullptr, *dKV = nullptr, *dh = nullptr;
  float *loss = nullptr, *workspace = nullptr, *hlast = nullptr;
  int32_t *items = nullptr, *targets = nullptr, *pos = nullptr, *cu = nullptr, *neg = nullptr,
          *rows = nullptr;
  int cap_R = 0, cap_B = 0;
  bool training = false;
  size_t ws_cap = 0;  // floats of workspace (the loss's, which may depend on the thread count)
  std::unique_ptr<Buffer> arena;
};

}  // namespace fsr
