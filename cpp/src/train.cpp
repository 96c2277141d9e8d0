// Training: packed batches with their negatives (the sampler), a step (forward, loss,
// backward), AdamW, and the epoch loop.
#include <algorithm>
#include <cmath>

#include "fastsasrec/common.h"
#include "fastsasrec/model.h"
#include "fastsasrec/rng.h"
#include "model_parts.h"

namespace fsr {

// Sequence s's most recent max_seq + 1 items: max_seq inputs, each with the next as target.
void Model::build_batch(const int32_t* items, const int64_t* offsets, const int64_t* seqs, int n,
                        int64_t step, HostBatch& out) const {
  const int T = cfg_.max_seq, V = cfg_.n_items;
  out.clear();
  for (int k = 0; k < n; ++k) {
    const int64_t s = seqs[k];
    const int64_t w = std::min<int64_t>(offsets[s + 1] - offsets[s], T + 1);
    FSR_REQUIRE(w >= 2, "sequence ", s, " has ", w, " items; a training sequence needs 2 or more");
    const int32_t* window = items + offsets[s + 1] - w;
    out.add_sequence(window, window + 1, (int)w - 1, T);
  }
  const uint64_t key = rng_key(cfg_.seed ^ kSamplerSalt, (uint64_t)step);
  if (cfg_.loss == LossKind::BCE) {
    // One negative per row, redrawn (up to 64 times) while it is in the sequence's window.
    const int R = out.R();
    out.negatives.resize(R);
    for (int b = 0; b < out.B(); ++b) {
      const int32_t* window = out.items.data() + out.cu[b];
      const int32_t* window_end = out.items.data() + out.cu[b + 1];
      const int32_t target_last = out.targets[out.cu[b + 1] - 1];
      for (int r = out.cu[b]; r < out.cu[b + 1]; ++r) {
        int32_t cand = 1;
        for (int attempt = 0; attempt < 64; ++attempt) {
          cand = rng_int(key, (uint64_t)r * 64 + attempt, 1, V);
          const bool seen = std::find(window, window_end, cand) != window_end || cand == target_last;
          if (!seen) break;
        }
        out.negatives[r] = cand;
      }
    }
  } else if (cfg_.loss == LossKind::GBCE) {
    // N uniform negatives per row (the loss skips one equal to the row's target).
    const int N = cfg_.n_negatives, R = out.R();
    out.negatives.resize((size_t)R * N);
    for (size_t e = 0; e < out.negatives.size(); ++e) out.negatives[e] = rng_int(key, e, 1, V);
  } else if (cfg_.loss == LossKind::SampledSoftmax) {
    const int N = cfg_.n_negatives, R = out.R();
    out.negatives.resize(N);
    const NegativeKind kind = cfg_.negatives;
    FSR_REQUIRE(kind != NegativeKind::Popularity || (int)pop_cdf_.size() == V,
                "negatives='popularity' needs the target counts (set_target_counts)");
    // mixed: the first half from the batch's targets, the rest uniform.
    const int n_batch = kind == NegativeKind::InBatch ? N : kind == NegativeKind::Mixed ? N / 2 : 0;
    for (int j = 0; j < N; ++j) {
      if (j < n_batch) {
        out.negatives[j] = out.targets[rng_int(key, j, 0, R - 1)];
      } else if (kind == NegativeKind::Popularity) {
        // 53 random bits, scaled to the total count: the first item whose cumulative
        // count exceeds the draw.
        const uint64_t bits = ((uint64_t)rng_u32(key, 2 * (uint64_t)j) << 21) |
                              (rng_u32(key, 2 * (uint64_t)j + 1) >> 11);
        const double u = (double)bits * 0x1p-53 * pop_cdf_.back();
        const auto it = std::upper_bound(pop_cdf_.begin(), pop_cdf_.end(), u);
        out.negatives[j] = 1 + (int32_t)std::min<ptrdiff_t>(it - pop_cdf_.begin(), V - 1);
      } else {
        out.negatives[j] = rng_int(key, j, 1, V);
      }
    }
  }
}

std::vector<int64_t> Model::target_counts(const int32_t* items, const int64_t* offsets,
                                          int64_t n_seq) const {
  const int T = cfg_.max_seq, V = cfg_.n_items;
  std::vector<int64_t> counts(V + 1, 0);
  for (int64_t s = 0; s < n_seq; ++s) {
    const int64_t n = std::min<int64_t>(offsets[s + 1] - offsets[s] - 1, T);
    for (int64_t e = offsets[s + 1] - n; e < offsets[s + 1]; ++e) {
      const int32_t it = items[e];
      FSR_REQUIRE(it >= 1 && it <= V, "sequences: item id ", it, " at position ", e,
                  " is outside 1..", V);
      ++counts[it];
    }
  }
  return counts;
}

// q(i): popularity and in_batch draw item i with probability c_i / total (in_batch: a row
// of a batch, so c_i / total on average over the epoch's batches); mixed draws half of the
// N that way and half uniformly, q(i) = (n_batch c_i / total + (N - n_batch) / V) / N.
// An item never a target gets q as if counted half a time (it is never drawn from the
// counts, and a finite log keeps the table free of -inf).
void Model::set_target_counts(const std::vector<int64_t>& counts) {
  const int V = cfg_.n_items;
  FSR_REQUIRE((int64_t)counts.size() == (int64_t)V + 1, "target counts: expected ", V + 1,
              " entries, got ", counts.size());
  if (counts == counts_ && (int)pop_cdf_.size() == V) return;
  std::vector<double> cdf(V);
  double total = 0.0;
  for (int i = 1; i <= V; ++i) {
    FSR_REQUIRE(counts[i] >= 0, "target counts: counts[", i, "] = ", counts[i], " is negative");
    total += (double)counts[i];
    cdf[i - 1] = total;
  }
  FSR_REQUIRE(total > 0, "target counts: every count is 0");
  if (cfg_.uses_logq()) {
    const int N = cfg_.n_negatives;
    const double w_batch = cfg_.negatives == NegativeKind::Mixed ? (double)(N / 2) / N : 1.0;
    std::vector<float> lq(V + 1, 0.f);
    for (int i = 1; i <= V; ++i) {
      const double c = counts[i] > 0 ? (double)counts[i] : 0.5;
      lq[i] = (float)std::log(w_batch * c / total + (1.0 - w_batch) / V);
    }
    be_->upload(logq_->grow((V + 1) * sizeof(float)), lq.data(), (V + 1) * sizeof(float));
    be_->synchronize();
  }
  pop_cdf_ = std::move(cdf);
  counts_ = counts;
}

// Upload, forward, loss (+ backward): the per-row losses are left in a.loss.
void Model::run_step(const HostBatch& batch, bool train, bool grad, int64_t step) {
  const Shape s{batch.R(), batch.B(), batch.n_max};
  FSR_ASSERT(s.R > 0 && s.B > 0);
  FSR_REQUIRE(!cfg_.uses_logq() || !counts_.empty(),
              "the logQ correction needs the target counts (set_target_counts)");
  Acts& a = *train_acts_;
  ensure_acts(a, s.R, s.B, true);
  upload_batch(batch, a);
  forward(a, s, train, step, Rows::All);
  if (grad) be_->zero(grads_->get(), n_params_ * sizeof(float));
  loss(a.loss, a.dh, a.h, a, s.R, grad ? 1.f / s.R : 0.f, id_mask_step(train, step));
  if (grad) backward(a, s, train, step);
}

double Model::forward_backward(const HostBatch& batch, bool train, bool grad, int64_t step) {
  std::lock_guard<std::mutex> lock(mu_);
  run_step(batch, train, grad, step);
  const int R = batch.R();
  std::vector<float> losses(R);
  be_->download(losses.data(), train_acts_->loss, R * sizeof(float));
  double sum = 0.0;
  for (float v : losses) sum += v;
  return sum / R;
}

// One pass over the arena; the feature table, after the undecayed tensors, takes a pass of
// its own with its weight decay (AdamW is elementwise: the split changes nothing else).
void Model::set_lr_scale(float s) {
  FSR_REQUIRE(std::isfinite(s) && s > 0.f, "lr_scale must be a finite number > 0, got ", s);
  std::lock_guard<std::mutex> lock(mu_);
  lr_scale_ = s;
}

void Model::optimizer_step() {
  ++step_;
  weights_changed();
  const float lr = cfg_.learning_rate * lr_scale_;
  be_->adamw_step(params_->f(), grads_->f(), m_->f(), v_->f(), off_F_, n_decay_,
                  lr, cfg_.beta1, cfg_.beta2, cfg_.adam_eps, cfg_.weight_decay, step_);
  const size_t n_F = n_params_ - off_F_;
  if (n_F)
    be_->adamw_step(params_->f() + off_F_, grads_->f() + off_F_, m_->f() + off_F_,
                    v_->f() + off_F_, n_F, n_F, lr, cfg_.beta1, cfg_.beta2,
                    cfg_.adam_eps, cfg_.weight_decay, step_);
}

Model::EpochResult Model::train_epoch(const int32_t* items, const int64_t* offsets,
                                     int64_t n_seq, int64_t epoch,
                                     const std::function<bool()>& stop) {
  std::lock_guard<std::mutex> lock(mu_);
  FSR_REQUIRE(n_seq >= 1, "sequences: nothing to train on (", n_seq, " sequences)");
  std::vector<int64_t> order(n_seq);
  for (int64_t s = 0; s < n_seq; ++s) {
    FSR_REQUIRE(offsets[s + 1] - offsets[s] >= 2, "sequences: sequence ", s, " has ",
                offsets[s + 1] - offsets[s],
                " items; every training sequence needs 2 or more (fit drops shorter ones)");
    order[s] = s;
  }
  if (cfg_.loss == LossKind::SampledSoftmax && cfg_.negatives != NegativeKind::Uniform)
    set_target_counts(target_counts(items, offsets, n_seq));
  // Fisher-Yates with the counter RNG of this epoch.
  const uint64_t key = rng_key(cfg_.seed ^ (kSamplerSalt + 1), (uint64_t)epoch);
  for (int64_t i = (int64_t)order.size() - 1; i > 0; --i) {
    const int64_t j = (int64_t)((uint64_t)rng_u32(key, i) * (uint64_t)(i + 1) >> 32);
    std::swap(order[i], order[j]);
  }
  // The per-row losses stay on the backend, copied batch after batch into a buffer that
  // the host sums when it fills and at the end: no batch waits for the device, so the host
  // builds and uploads the next batch while the device computes this one.
  // The buffer is kept between epochs (an allocation and its release would each wait for
  // the device).
  const size_t cap = std::max<size_t>(size_t(1) << 22, (size_t)cfg_.batch_size * (cfg_.max_seq + 1));
  float* losses = static_cast<float*>(loss_buf_->grow(cap * sizeof(float)));
  size_t used = 0;
  double loss_sum = 0.0;
  int64_t rows = 0;
  std::vector<float> host;
  auto flush = [&] {
    host.resize(used);
    be_->download(host.data(), losses, used * sizeof(float));
    for (float v : host) loss_sum += v;
    used = 0;
  };
  // An interruptible epoch keeps what it changes (weights, moments, step) as they were, to
  // put back when it stops or throws: the epoch is all or nothing.
  const size_t bytes = n_params_ * sizeof(float);
  const int64_t step0 = step_;
  char* saved = nullptr;
  if (stop) {
    saved = static_cast<char*>(backup_->grow(3 * bytes));
    be_->copy(saved, params_->get(), bytes);
    be_->copy(saved + bytes, m_->get(), bytes);
    be_->copy(saved + 2 * bytes, v_->get(), bytes);
  }
  auto restore = [&] {
    be_->copy(params_->get(), saved, bytes);
    weights_changed();
    be_->copy(m_->get(), saved + bytes, bytes);
    be_->copy(v_->get(), saved + 2 * bytes, bytes);
    be_->synchronize();
    step_ = step0;
  };
  HostBatch batch;
  for (size_t b0 = 0; b0 < order.size(); b0 += cfg_.batch_size) {
    if (stop) {
      bool stopped;
      try {
        stopped = stop();
      } catch (...) {
        restore();
        throw;
      }
      if (stopped) {
        restore();
        return {0.0, false};
      }
    }
    const int n = (int)std::min<size_t>(cfg_.batch_size, order.size() - b0);
    try {
      build_batch(items, offsets, order.data() + b0, n, step_ + 1, batch);
      const int R = batch.R();
      if (used + R > cap) flush();
      run_step(batch, true, true, step_ + 1);
      be_->copy(losses + used, train_acts_->loss, R * sizeof(float));
      used += R;
      optimizer_step();
      rows += R;
    } catch (...) {
      if (stop) restore();
      throw;
    }
  }
  flush();
  return {loss_sum / std::max<int64_t>(rows, 1), true};
}

}  // namespace fsr
