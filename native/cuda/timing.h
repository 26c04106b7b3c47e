// Timings for finding where a step goes. OpTimer, per-operation GPU time: with
// TROUPE_CUDA_TIMING=1 the backend runs steps without CUDA graphs, records an event before each
// operation, and prints the total per operation (and per step kind) to stderr when the engine is
// destroyed. StepSpans, below, splits the wall time of a step replayed from a graph.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
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

// Where the wall time of a step replayed from a CUDA graph goes: with TROUPE_CUDA_STEP_SPANS=1
// the backend times, for each graph step, the host's work before the launch, the launch call, the
// graph on the GPU (events on either side of it) and the sampling with its wait, and prints the
// medians per graph (batch size, with or without adapters) when the engine is destroyed. Unlike
// TROUPE_CUDA_TIMING it keeps the graphs and programmatic launches, so the GPU time is the one
// the benchmarks meet.
class StepSpans {
 public:
  StepSpans()
      : enabled_(std::getenv("TROUPE_CUDA_STEP_SPANS") && std::string(std::getenv("TROUPE_CUDA_STEP_SPANS")) == "1") {}
  ~StepSpans() {
    if (!enabled_) return;
    for (auto& [kind, rows] : rows_) {
      std::fprintf(stderr, "troupe: graph steps %s (%zu): median us host before launch", kind.c_str(), rows.size());
      const char* names[] = {"", " launch", " GPU graph", " sample and wait", " whole"};
      for (int j = 0; j < kCols; ++j) {
        std::vector<double> col;
        for (auto& r : rows) col.push_back(r[j]);
        std::nth_element(col.begin(), col.begin() + col.size() / 2, col.end());
        std::fprintf(stderr, "%s %.1f", names[j], col[col.size() / 2]);
      }
      std::fprintf(stderr, "\n");
    }
    if (before_) cudaEventDestroy(before_);
    if (after_) cudaEventDestroy(after_);
  }
  bool enabled() const { return enabled_; }
  void start() {
    if (enabled_) t_[0] = now();
  }
  // Around cudaGraphLaunch.
  void launching(cudaStream_t s) {
    if (!enabled_) return;
    if (!before_) {
      cudaEventCreate(&before_);
      cudaEventCreate(&after_);
    }
    t_[1] = now();
    cudaEventRecord(before_, s);
  }
  void launched(cudaStream_t s) {
    if (!enabled_) return;
    t_[2] = now();
    cudaEventRecord(after_, s);
  }
  // After the step's results are on the host.
  void end(const std::string& kind) {
    if (!enabled_) return;
    const double t3 = now();
    float ms = 0;
    cudaEventElapsedTime(&ms, before_, after_);
    rows_[kind].push_back({t_[1] - t_[0], t_[2] - t_[1], 1000.0 * ms, t3 - t_[2], t3 - t_[0]});
  }

 private:
  static constexpr int kCols = 5;
  static double now() {
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  bool enabled_;
  double t_[3] = {};
  cudaEvent_t before_ = nullptr, after_ = nullptr;
  std::map<std::string, std::vector<std::array<double, kCols>>> rows_;
};

}  // namespace cuda
}  // namespace troupe
