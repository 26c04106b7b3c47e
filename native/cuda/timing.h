// Per-operation GPU time for finding where a step goes: with TROUPE_CUDA_TIMING=1 the backend
// runs steps without CUDA graphs, records an event before each operation, and prints the total
// per operation (and per step kind) to stderr when the engine is destroyed.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace troupe {
namespace cuda {

class OpTimer {
 public:
  explicit OpTimer(bool enabled) : enabled_(enabled) {}
  ~OpTimer() {
    if (!enabled_) return;
    for (auto& [kind, ops] : totals_) {
      double sum = 0;
      for (auto& [op, ms] : ops) sum += ms;
      std::fprintf(stderr, "troupe: GPU time of %s steps (%d steps, %.3f ms each):", kind.c_str(), steps_[kind],
                   sum / steps_[kind]);
      for (auto& [op, ms] : ops) std::fprintf(stderr, " %s %.3f", op.c_str(), ms / steps_[kind]);
      std::fprintf(stderr, "\n");
    }
    for (auto& e : pool_) cudaEventDestroy(e);
  }
  bool enabled() const { return enabled_; }
  void begin(const std::string& kind) {
    kind_ = kind;
    used_ = 0;
    marks_.clear();
  }
  void mark(const char* op, cudaStream_t s) {
    if (!enabled_) return;
    if (used_ == pool_.size()) {
      cudaEvent_t e;
      cudaEventCreate(&e);
      pool_.push_back(e);
    }
    cudaEventRecord(pool_[used_], s);
    marks_.emplace_back(op, used_++);
  }
  // After the stream has synchronized: the time from each mark to the next goes to its op.
  void end(cudaStream_t s) {
    if (!enabled_ || marks_.empty()) return;
    mark("", s);
    cudaEventSynchronize(pool_[used_ - 1]);
    auto& ops = totals_[kind_];
    for (size_t i = 0; i + 1 < marks_.size(); ++i) {
      float ms = 0;
      cudaEventElapsedTime(&ms, pool_[marks_[i].second], pool_[marks_[i + 1].second]);
      ops[marks_[i].first] += ms;
    }
    ++steps_[kind_];
  }

 private:
  bool enabled_;
  std::string kind_;
  size_t used_ = 0;
  std::vector<cudaEvent_t> pool_;
  std::vector<std::pair<std::string, size_t>> marks_;
  std::map<std::string, std::map<std::string, double>> totals_;
  std::map<std::string, int> steps_;
};

}  // namespace cuda
}  // namespace troupe
