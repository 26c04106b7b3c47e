// Host-side collectives between the tensor-parallel ranks of one process. Each rank is an engine
// on its own worker thread; ranks that name the same group id find each other here. The CPU
// backend runs its all-reduces and all-gathers through this directly; the CUDA backend uses it
// to agree on setup (NCCL's unique id, the KV cache size) and, when ranks share a GPU or NCCL
// is missing, to carry its collectives through host memory.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"

namespace troupe {

class CommGroup {
 public:
  // The group of `size` ranks named `id`, created by the first rank to join. Throws
  // std::invalid_argument when the id is in use with another size or the rank already joined.
  static std::shared_ptr<CommGroup> join(const std::string& id, int size, int rank);
  // Fails every rank's current and later collectives of group `id` with `why` (a rank died or
  // is shutting down), so none waits forever. Returns false when no such group exists.
  static bool abortGroup(const std::string& id, const std::string& why);

  CommGroup(std::string id, int size) : id_(std::move(id)), size_(size), joined_(size, false) {}
  int size() const { return size_; }
  const std::string& id() const { return id_; }

  // Every rank gets the element-wise sum, added in rank order, so all ranks hold the same bits.
  void allReduceSum(int rank, float* data, size_t n);
  // out[r * n + i] = rank r's part[i], on every rank.
  void allGather(int rank, const float* part, size_t n, float* out);
  // Every rank's `n` bytes, rank-major, on every rank.
  std::vector<uint8_t> allGatherBytes(int rank, const void* data, size_t n);
  int64_t allReduceMin(int rank, int64_t v);
  void abort(const std::string& why);

 private:
  // Waits until all ranks arrive; throws std::runtime_error once the group is aborted.
  void barrier();

  const std::string id_;
  const int size_;
  std::vector<bool> joined_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  std::string aborted_;
  // What each rank published for the collective in progress.
  std::vector<const void*> inputs_ = std::vector<const void*>(size_, nullptr);
  std::vector<void*> outputs_ = std::vector<void*>(size_, nullptr);
  std::vector<int64_t> values_ = std::vector<int64_t>(size_, 0);
};

// The group of this rank; a lone rank gets a private one (no registry entry, no waiting).
std::shared_ptr<CommGroup> joinGroup(const TensorParallel& tp);
// Fails the collectives of the rank's group with "rank R <what>" (nothing for a lone rank), so the
// other ranks stop waiting for one that failed or is gone.
void releaseGroup(const TensorParallel& tp, const std::string& what);

// The rank's part of the model: the full config with its local head, KV head and MLP feature
// counts (the vocabulary stays whole; embed and lm_head rows are tp.vocabStart..+vocabCount).
ModelConfig rankConfig(const ModelConfig& full, const TensorParallel& tp);

}  // namespace troupe
