// A kernel timeline of any CUDA program, kernels in CUDA graphs and programmatic launches
// included: when and where each kernel ran, as the GPU ran it. Nsight Compute times each kernel
// alone, serialized, which hides what a decode step is made of: how far a kernel starts before the
// one before it ends, and what each adds to the step. Loaded beside the program, it asks CUPTI for
// its concurrent-kernel records (which keep kernels overlapping as they would) and writes one line
// a kernel: start and end (ns, GPU clock), stream, graph, grid size and the demangled name.
//
//   g++ -std=c++17 -O2 -shared -fPIC -I/usr/local/cuda/include bench/kernel_timeline.cc \
//       -o /tmp/libkernel_timeline.so -L/usr/local/cuda/lib64 -lcupti
//   TROUPE_KERNEL_TIMELINE=/tmp/timeline.txt LD_PRELOAD=/tmp/libkernel_timeline.so \
//       PROFILE=1 node bench/gpu-lora-profile.js MODEL ADAPTERS RANK
//   python3 bench/timeline_steps.py /tmp/timeline.txt [OUT.json]
// or, for base decode steps of ROWS rows:
//   TROUPE_KERNEL_TIMELINE=/tmp/timeline.txt LD_PRELOAD=/tmp/libkernel_timeline.so \
//       ROWS=1 node bench/gpu-decode-timeline.js MODEL
//   python3 bench/timeline_decode.py /tmp/timeline.txt 10 [OUT.json]
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace {

constexpr size_t kBufferBytes = 8u << 20;
FILE* out = nullptr;
std::mutex writing;

void check(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* text = nullptr;
  cuptiGetResultString(r, &text);
  std::fprintf(stderr, "kernel timeline: %s failed: %s\n", what, text ? text : "unknown error");
}

std::string demangled(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : name;
  std::free(d);
  return s;
}

void CUPTIAPI requested(uint8_t** buffer, size_t* size, size_t* maxRecords) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *maxRecords = 0;  // as many as fit
}

void CUPTIAPI completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> lock(writing);
  CUpti_Activity* record = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || !out) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
    std::fprintf(out, "%llu %llu %u %u %d %s\n", static_cast<unsigned long long>(k->start),
                 static_cast<unsigned long long>(k->end), k->streamId, k->graphId, k->gridX * k->gridY * k->gridZ,
                 demangled(k->name).c_str());
  }
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped) == CUPTI_SUCCESS && dropped > 0)
    std::fprintf(stderr, "kernel timeline: %zu records dropped\n", dropped);
  std::free(buffer);
}

__attribute__((constructor)) void start() {
  const char* path = std::getenv("TROUPE_KERNEL_TIMELINE");
  if (!path) return;
  out = std::fopen(path, "w");
  if (!out) {
    std::fprintf(stderr, "kernel timeline: cannot write %s\n", path);
    return;
  }
  check(cuptiActivityRegisterCallbacks(requested, completed), "cuptiActivityRegisterCallbacks");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable");
  // Buffers handed back while the program runs: the CUDA driver may be gone by the time the
  // process's destructors run.
  check(cuptiActivityFlushPeriod(200), "cuptiActivityFlushPeriod");
}

__attribute__((destructor)) void stop() {
  if (!out) return;
  cuptiActivityFlushAll(1);
  std::lock_guard<std::mutex> lock(writing);
  std::fclose(out);
  out = nullptr;
}

}  // namespace
