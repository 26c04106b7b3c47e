#include "comm.h"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace troupe {

namespace {

struct Groups {
  std::mutex mu;
  std::map<std::string, std::weak_ptr<CommGroup>> byId;
};

// Never destroyed, like the engine registry: ranks may still leave during exit.
Groups& groups() {
  static Groups* g = new Groups();
  return *g;
}

}  // namespace

std::shared_ptr<CommGroup> CommGroup::join(const std::string& id, int size, int rank) {
  if (size < 1 || rank < 0 || rank >= size) {
    throw std::invalid_argument("tensor parallel: rank " + std::to_string(rank) + " is outside [0, " +
                                std::to_string(size) + ")");
  }
  Groups& g = groups();
  std::lock_guard<std::mutex> lock(g.mu);
  for (auto it = g.byId.begin(); it != g.byId.end();) it = it->second.expired() ? g.byId.erase(it) : std::next(it);
  std::shared_ptr<CommGroup> group = g.byId[id].lock();
  if (!group) {
    group = std::make_shared<CommGroup>(id, size);
    g.byId[id] = group;
  }
  if (group->size_ != size) {
    throw std::invalid_argument("tensor parallel: group " + id + " has " + std::to_string(group->size_) +
                                " ranks, this engine expects " + std::to_string(size));
  }
  std::lock_guard<std::mutex> glock(group->mu_);
  if (group->joined_[rank])
    throw std::invalid_argument("tensor parallel: rank " + std::to_string(rank) + " of group " + id + " joined twice");
  group->joined_[rank] = true;
  return group;
}

bool CommGroup::abortGroup(const std::string& id, const std::string& why) {
  std::shared_ptr<CommGroup> group;
  {
    Groups& g = groups();
    std::lock_guard<std::mutex> lock(g.mu);
    auto it = g.byId.find(id);
    if (it != g.byId.end()) group = it->second.lock();
  }
  if (!group) return false;
  group->abort(why);
  return true;
}

void CommGroup::abort(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (aborted_.empty()) aborted_ = why.empty() ? "aborted" : why;
  cv_.notify_all();
}

void CommGroup::barrier() {
  std::unique_lock<std::mutex> lock(mu_);
  const auto fail = [&] { throw std::runtime_error("tensor-parallel group stopped: " + aborted_); };
  if (!aborted_.empty()) fail();
  const uint64_t gen = generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  cv_.wait(lock, [&] { return generation_ != gen || !aborted_.empty(); });
  if (generation_ == gen) fail();
}

void CommGroup::allReduceSum(int rank, float* data, size_t n) {
  if (size_ == 1) return;
  outputs_[rank] = data;
  barrier();
  // Rank r sums slice r over all ranks and writes it back to every rank's buffer; slices are
  // disjoint, so no two threads touch the same element between the barriers.
  const size_t per = (n + size_ - 1) / size_;
  const size_t begin = std::min(n, per * rank), end = std::min(n, begin + per);
  std::vector<float> sum(end - begin, 0.0f);
  for (int r = 0; r < size_; ++r) {
    const float* src = static_cast<const float*>(outputs_[r]) + begin;
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += src[i];
  }
  for (int r = 0; r < size_; ++r) std::copy(sum.begin(), sum.end(), static_cast<float*>(outputs_[r]) + begin);
  barrier();
}

void CommGroup::allGather(int rank, const float* part, size_t n, float* out) {
  inputs_[rank] = part;
  barrier();
  for (int r = 0; r < size_; ++r) {
    const float* src = static_cast<const float*>(inputs_[r]);
    std::copy(src, src + n, out + static_cast<size_t>(r) * n);
  }
  // Nobody may reuse its part until every rank has copied it.
  barrier();
}

std::vector<uint8_t> CommGroup::allGatherBytes(int rank, const void* data, size_t n) {
  std::vector<uint8_t> out(n * size_);
  inputs_[rank] = data;
  barrier();
  for (int r = 0; r < size_; ++r) {
    const uint8_t* src = static_cast<const uint8_t*>(inputs_[r]);
    std::copy(src, src + n, out.begin() + static_cast<ptrdiff_t>(r * n));
  }
  barrier();
  return out;
}

int64_t CommGroup::allReduceMin(int rank, int64_t v) {
  values_[rank] = v;
  barrier();
  const int64_t m = *std::min_element(values_.begin(), values_.end());
  barrier();
  return m;
}

std::shared_ptr<CommGroup> joinGroup(const TensorParallel& tp) {
  return tp.size == 1 ? std::make_shared<CommGroup>("", 1) : CommGroup::join(tp.group, tp.size, tp.rank);
}

void releaseGroup(const TensorParallel& tp, const std::string& what) {
  if (tp.size > 1) CommGroup::abortGroup(tp.group, "rank " + std::to_string(tp.rank) + " " + what);
}

void checkTensorParallel(const ModelConfig& c, TensorParallel& tp) {
  const std::string w = "createEngine: options.tp: ";
  if (tp.size < 1 || tp.rank < 0 || tp.rank >= tp.size) {
    throw std::invalid_argument(w + "rank " + std::to_string(tp.rank) + " is outside [0, " + std::to_string(tp.size) +
                                ")");
  }
  if (tp.size == 1) {
    tp.numHeads = c.numHeads;
    tp.numKvHeads = c.numKvHeads;
    tp.intermediateSize = c.intermediateSize;
    tp.vocabStart = 0;
    tp.vocabCount = tp.vocabPart = c.vocabSize;
    return;
  }
  if (tp.group.empty()) throw std::invalid_argument(w + "a group id is needed with more than one rank");
  if (tp.numHeads * tp.size != c.numHeads) {
    throw std::invalid_argument(w + std::to_string(tp.numHeads) + " heads per rank do not make the model's " +
                                std::to_string(c.numHeads) + " over " + std::to_string(tp.size) + " ranks");
  }
  if (tp.intermediateSize * tp.size != c.intermediateSize) {
    throw std::invalid_argument(w + "intermediateSize " + std::to_string(tp.intermediateSize) +
                                " per rank does not make " + std::to_string(c.intermediateSize) + " over " +
                                std::to_string(tp.size) + " ranks");
  }
  if (tp.numKvHeads < 1 || tp.numHeads % tp.numKvHeads != 0) {
    throw std::invalid_argument(w + "numKvHeads " + std::to_string(tp.numKvHeads) + " does not divide the rank's " +
                                std::to_string(tp.numHeads) + " heads");
  }
  if (tp.vocabPart < 1 || tp.vocabPart * static_cast<int64_t>(tp.size) < c.vocabSize ||
      tp.vocabStart != std::min(c.vocabSize, tp.rank * tp.vocabPart) || tp.vocabCount < 0 ||
      tp.vocabCount > tp.vocabPart || tp.vocabStart + tp.vocabCount > c.vocabSize) {
    throw std::invalid_argument(w + "vocabulary rows " + std::to_string(tp.vocabStart) + "+" +
                                std::to_string(tp.vocabCount) + " (parts of " + std::to_string(tp.vocabPart) +
                                ") are not rank " + std::to_string(tp.rank) + "'s part of " +
                                std::to_string(c.vocabSize));
  }
}

ModelConfig rankConfig(const ModelConfig& full, const TensorParallel& tp) {
  ModelConfig c = full;
  if (tp.size > 1) {
    c.numHeads = tp.numHeads;
    c.numKvHeads = tp.numKvHeads;
    c.intermediateSize = tp.intermediateSize;
  }
  return c;
}

}  // namespace troupe
