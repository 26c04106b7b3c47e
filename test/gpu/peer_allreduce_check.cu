// The peer-to-peer collectives (native/cuda/peer_allreduce.cu) on every visible GPU (two or
// more, with peer access), checked bit for bit and timed against NCCL. Each rank is a thread, as
// in the engine. Build and run on a multi-GPU machine (add -DWITH_NCCL -lnccl to time NCCL):
//   nvcc -std=c++17 -arch=sm_90a -O3 -Inative -o /tmp/peer_check test/gpu/peer_allreduce_check.cu \
//     native/cuda/peer_allreduce.cu [-DWITH_NCCL -lnccl] && /tmp/peer_check
// Checks: 2,000 collectives of random sizes queued back to back (sums and gathers mixed, no host
// synchronization between them) equal the host's rank-order sums and concatenations exactly;
// the same through a replayed CUDA graph. Then prints microseconds per all-reduce by size.
// Ranks must be on distinct GPUs: two spinning ranks on one GPU can wait for each other forever.
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "cuda/peer_allreduce.h"
#ifdef WITH_NCCL
#include <nccl.h>
#endif

using troupe::cuda::PeerSet;
using troupe::cuda::PeerSignals;

#define CK(x)                                                                          \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

namespace {

constexpr size_t kCapacity = size_t{2} << 20;  // floats per half: up to 8 MiB messages

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> l(mu_);
    const int gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(l, [&] { return gen != gen_; });
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_, count_ = 0, gen_ = 0;
};

struct Op {
  bool gather;
  size_t n;
  size_t offset;  // into each rank's input and output pools
};

// Rank r's input value i of op k: distinct per rank, op and index, exactly representable sums.
float value(int r, size_t k, size_t i) {
  return static_cast<float>(static_cast<int>((i * 7 + k * 13 + r * 101) % 2001) - 1000) * 0.125f + r * 0.5f;
}

int gRanks = 0;
PeerSet gSet{};
std::vector<int> gFailures;
std::vector<std::vector<double>> gTimes;  // [rank][size index] us, peer then nccl
#ifdef WITH_NCCL
std::vector<ncclComm_t> gNccl;
#endif

void runRank(int r, Barrier& bar, const std::vector<Op>& ops, size_t pool, const std::vector<size_t>& sizes) {
  CK(cudaSetDevice(r));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  PeerSet set = gSet;
  set.rank = r;
  float *in = nullptr, *out = nullptr;
  CK(cudaMalloc(&in, pool * 4));
  CK(cudaMalloc(&out, pool * gRanks * 4));
  std::vector<float> host(pool);
  for (const Op& op : ops)
    for (size_t i = 0; i < op.n; ++i) host[op.offset + i] = value(r, &op - ops.data(), i);
  CK(cudaMemcpy(in, host.data(), pool * 4, cudaMemcpyHostToDevice));

  auto enqueue = [&](size_t k, const Op& op) {
    if (op.gather) {
      troupe::cuda::peerAllGather(set, in + op.offset, op.n, out + op.offset * gRanks, s);
    } else {
      CK(cudaMemcpyAsync(out + op.offset * gRanks, in + op.offset, op.n * 4, cudaMemcpyDeviceToDevice, s));
      troupe::cuda::peerAllReduceSum(set, out + op.offset * gRanks, op.n, s);
    }
    (void)k;
  };
  auto verify = [&](const char* what) {
    std::vector<float> got(pool * gRanks);
    CK(cudaMemcpy(got.data(), out, got.size() * 4, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (size_t k = 0; k < ops.size(); ++k) {
      const Op& op = ops[k];
      for (size_t i = 0; i < op.n && bad < 5; ++i) {
        if (op.gather) {
          for (int q = 0; q < gRanks; ++q) {
            const float want = value(q, k, i), have = got[op.offset * gRanks + q * op.n + i];
            if (want != have) {
              std::printf("rank %d %s: gather op %zu (n %zu) rank %d [%zu] = %g, want %g\n", r, what, k, op.n, q, i, have,
                          want);
              ++bad;
            }
          }
        } else {
          float want = value(0, k, i);
          for (int q = 1; q < gRanks; ++q) want += value(q, k, i);
          const float have = got[op.offset * gRanks + i];
          if (want != have) {
            std::printf("rank %d %s: sum op %zu (n %zu) [%zu] = %g, want %g\n", r, what, k, op.n, i, have, want);
            ++bad;
          }
        }
      }
    }
    gFailures[r] += bad;
    std::printf("rank %d %s: %zu collectives, %s\n", r, what, ops.size(), bad ? "MISMATCH" : "all exact");
  };

  // 1. Back to back, no host synchronization between collectives.
  bar.wait();
  for (size_t k = 0; k < ops.size(); ++k) enqueue(k, ops[k]);
  CK(cudaStreamSynchronize(s));
  verify("queued");

  // 2. The first 40 in a graph, replayed 5 times (outputs cleared before).
  const std::vector<Op> first(ops.begin(), ops.begin() + 40);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (size_t k = 0; k < first.size(); ++k) enqueue(k, first[k]);
  CK(cudaStreamEndCapture(s, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  CK(cudaMemset(out, 0, pool * gRanks * 4));
  CK(cudaDeviceSynchronize());
  bar.wait();
  for (int rep = 0; rep < 5; ++rep) CK(cudaGraphLaunch(exec, s));
  CK(cudaStreamSynchronize(s));
  {
    std::vector<float> got(pool * gRanks);
    CK(cudaMemcpy(got.data(), out, got.size() * 4, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (size_t k = 0; k < first.size(); ++k) {
      const Op& op = first[k];
      const size_t i = op.n - 1;
      if (op.gather) {
        for (int q = 0; q < gRanks; ++q) bad += got[op.offset * gRanks + q * op.n + i] != value(q, k, i);
      } else {
        float want = value(0, k, i);
        for (int q = 1; q < gRanks; ++q) want += value(q, k, i);
        bad += got[op.offset * gRanks + i] != want;
      }
    }
    gFailures[r] += bad;
    std::printf("rank %d graph: 40 collectives x 5 replays, %s\n", r, bad ? "MISMATCH" : "all exact");
  }

  // 3. Time: 50 all-reduces of each size captured in one graph, replayed 10 times.
  float* buf = out;
#ifdef WITH_NCCL
  // NCCL connects its peers on the first call, which cannot happen under capture.
  bar.wait();
  if (ncclAllReduce(buf, buf, sizes.back(), ncclFloat32, ncclSum, gNccl[r], s) != ncclSuccess) {
    std::printf("rank %d: ncclAllReduce failed\n", r);
    std::exit(1);
  }
  CK(cudaStreamSynchronize(s));
#endif
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (size_t si = 0; si < sizes.size(); ++si) {
    for (int kind = 0; kind < 2; ++kind) {
#ifndef WITH_NCCL
      if (kind == 1) {
        gTimes[r].push_back(-1);
        continue;
      }
#endif
      const size_t n = sizes[si];
      CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      for (int i = 0; i < 50; ++i) {
        if (kind == 0) {
          troupe::cuda::peerAllReduceSum(set, buf, n, s);
        } else {
#ifdef WITH_NCCL
          ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, gNccl[r], s);
#endif
        }
      }
      cudaGraph_t g;
      cudaGraphExec_t ge;
      CK(cudaStreamEndCapture(s, &g));
      CK(cudaGraphInstantiate(&ge, g, 0));
      bar.wait();
      CK(cudaGraphLaunch(ge, s));  // warm-up
      CK(cudaStreamSynchronize(s));
      bar.wait();
      CK(cudaEventRecord(a, s));
      for (int rep = 0; rep < 10; ++rep) CK(cudaGraphLaunch(ge, s));
      CK(cudaEventRecord(b, s));
      CK(cudaEventSynchronize(b));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, a, b));
      gTimes[r].push_back(ms * 1000.0 / 500);
      CK(cudaGraphExecDestroy(ge));
      CK(cudaGraphDestroy(g));
    }
  }
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // lines from both ranks in order, even if one fails
  CK(cudaGetDeviceCount(&gRanks));
  if (gRanks < 2) {
    std::printf("needs two GPUs, %d visible\n", gRanks);
    return 1;
  }
  if (gRanks > troupe::cuda::kPeerMaxRanks) gRanks = troupe::cuda::kPeerMaxRanks;
  gSet.capacity = kCapacity;
  gSet.ranks = gRanks;
  for (int r = 0; r < gRanks; ++r) {
    CK(cudaSetDevice(r));
    for (int q = 0; q < gRanks; ++q) {
      if (q == r) continue;
      int can = 0;
      CK(cudaDeviceCanAccessPeer(&can, r, q));
      if (!can) {
        std::printf("GPU %d cannot access GPU %d\n", r, q);
        return 1;
      }
      CK(cudaDeviceEnablePeerAccess(q, 0));
    }
    void *st, *sg;
    CK(cudaMalloc(&st, 2 * kCapacity * 4));
    CK(cudaMalloc(&sg, sizeof(PeerSignals)));
    CK(cudaMemset(sg, 0, sizeof(PeerSignals)));
    gSet.staging[r] = static_cast<float*>(st);
    gSet.signals[r] = static_cast<PeerSignals*>(sg);
  }
  CK(cudaDeviceSynchronize());
#ifdef WITH_NCCL
  gNccl.resize(gRanks);
  std::vector<int> devs(gRanks);
  for (int r = 0; r < gRanks; ++r) devs[r] = r;
  if (ncclCommInitAll(gNccl.data(), gRanks, devs.data()) != ncclSuccess) {
    std::printf("ncclCommInitAll failed\n");
    return 1;
  }
#endif
  // Random sizes (multiples of 4), small ones most often, a few near the capacity.
  std::mt19937 rng(7);
  std::vector<Op> ops;
  size_t pool = 0;
  for (int k = 0; k < 2000; ++k) {
    const int kind = rng() % 10;
    size_t n = k % 100 == 99 ? kCapacity - 4 * (rng() % 4) : kind < 6 ? 4 * (1 + rng() % 1024) : 4 * (1 + rng() % 65536);
    if (k < 40) n = 4 * (1 + rng() % 4096);  // the graph part stays small
    ops.push_back({rng() % 3 == 0, n, pool});
    pool += n;
  }
  const std::vector<size_t> sizes = {1024, 4096, 16384, 65536, 131072, 262144, 524288, 1048576, 2097152};
  gFailures.assign(gRanks, 0);
  gTimes.assign(gRanks, {});
  Barrier bar(gRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < gRanks; ++r) threads.emplace_back(runRank, r, std::ref(bar), std::cref(ops), pool, sizes);
  for (auto& t : threads) t.join();
  std::printf("all-reduce of f32, microseconds per call (in a CUDA graph, rank 0), %d GPUs:\n", gRanks);
  std::printf("%10s %10s %10s\n", "bytes", "peer", "nccl");
  for (size_t si = 0; si < sizes.size(); ++si) {
    std::printf("%10zu %10.2f %10.2f\n", sizes[si] * 4, gTimes[0][2 * si], gTimes[0][2 * si + 1]);
  }
  int failures = 0;
  for (int f : gFailures) failures += f;
  std::printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
