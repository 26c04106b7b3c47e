// The Node-API layer: turns the JS arguments into the structs of backend.h (js_args.cc) and keeps
// engines in a process-wide registry, so a handle created on one worker thread works on any other
// thread that loads the addon.
#include <napi.h>

#ifdef TROUPE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

#include "backend.h"
#include "binding.h"
#include "comm.h"
#include "js_args.h"
#include "sampling.h"

namespace troupe {
namespace {

#ifdef TROUPE_CUDA_BACKEND
constexpr bool kCudaBuilt = true;
#else
constexpr bool kCudaBuilt = false;
#endif

struct Registry {
  std::mutex mu;
  std::unordered_map<int64_t, std::shared_ptr<EngineEntry>> engines;
  int64_t next = 1;
};

// Never destroyed: engines may outlive module unload of one worker, and static destruction order
// at exit must not race a thread still stepping.
Registry& registry() {
  static Registry* r = new Registry();
  return *r;
}

int handleArg(const Napi::CallbackInfo& info, const char* fn) {
  return static_cast<int>(handleValue(info.Length() < 1 ? info.Env().Undefined() : info[0], fn, "handle"));
}

std::shared_ptr<EngineEntry> lookup(const Napi::CallbackInfo& info, const char* fn) {
  return lookupEngine(info.Length() < 1 ? info.Env().Undefined() : info[0], fn);
}

template <class T, class Arr>
Arr copyOut(Napi::Env env, const std::vector<T>& v) {
  Arr a = Arr::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(T));
  return a;
}

// Null when every row is fine (the usual case), else a string or null per row.
Napi::Value rowErrors(Napi::Env env, const std::vector<std::string>& errors) {
  bool any = false;
  for (const std::string& e : errors) any = any || !e.empty();
  if (!any) return env.Null();
  Napi::Array a = Napi::Array::New(env, errors.size());
  for (size_t i = 0; i < errors.size(); ++i) {
    a.Set(static_cast<uint32_t>(i),
          errors[i].empty() ? env.Null() : Napi::String::New(env, errors[i]).As<Napi::Value>());
  }
  return a;
}

// --- exports ---------------------------------------------------------------------------------

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cuda", kCudaBuilt);
  o.Set("cudaReason", TROUPE_CUDA_REASON);
#ifdef TROUPE_HAVE_NCCL
  o.Set("nccl", true);
#else
  o.Set("nccl", false);
#endif
  o.Set("version", TROUPE_VERSION);
  return o;
}

Napi::Value CudaDeviceCount(const Napi::CallbackInfo& info) {
  int count = 0;
#ifdef TROUPE_CUDA_BACKEND
  count = cudaBackendDeviceCount();
#elif defined(TROUPE_HAVE_CUDA)
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
#endif
  return Napi::Number::New(info.Env(), count);
}

Napi::Value CreateEngine(const Napi::CallbackInfo& info) {
  if (info.Length() < 3) throw ArgError("createEngine(config, tensors, options): expected 3 arguments");
  ModelConfig config = parseConfig(info[0]);
  std::vector<TensorRef> tensors = parseTensors(info[1]);
  EngineOptions options = parseOptions(info[2]);
  checkTensorParallel(config, options.tp);
  auto entry = std::make_shared<EngineEntry>();
  if (options.device == "cuda") {
#ifdef TROUPE_CUDA_BACKEND
    entry->backend = makeCudaBackend(config, tensors, options);
#else
    throw std::invalid_argument(
        std::string("createEngine: device \"cuda\" requested but this build has no CUDA backend: ") +
        TROUPE_CUDA_REASON);
#endif
  } else {
    entry->backend = makeCpuBackend(config, tensors, options);
  }
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  const int64_t h = r.next++;
  r.engines[h] = std::move(entry);
  return Napi::Number::New(info.Env(), static_cast<double>(h));
}

Napi::Value EngineInfoFn(const Napi::CallbackInfo& info) {
  auto e = lookup(info, "engineInfo");
  std::lock_guard<std::mutex> lock(e->mu);
  const EngineInfo i = e->backend->info();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("device", i.device);
  o.Set("deviceName", i.deviceName);
  o.Set("kvBlocks", i.kvBlocks);
  o.Set("blockSize", i.blockSize);
  o.Set("loraSlots", i.loraSlots);
  o.Set("maxLoraRank", i.maxLoraRank);
  o.Set("loraSlotRank", i.loraSlotRank);
  o.Set("collective", i.collective);
  o.Set("loraKernel", i.loraKernel);
  return o;
}

Napi::Value Step(const Napi::CallbackInfo& info) {
  auto e = lookup(info, "step");
  if (info.Length() < 2) throw ArgError("step(handle, batch): expected 2 arguments");
  StepBatch batch = parseBatch(info[1]);
  StepOutput out;
  {
    std::lock_guard<std::mutex> lock(e->mu);
    if (batch.resident) e->sequences.resolve(batch);
    e->backend->step(batch, out);
    e->sequences.record(batch, out);
  }
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
  r.Set("tokens", copyOut<int32_t, Napi::Int32Array>(env, out.tokens));
  r.Set("logprobs", copyOut<float, Napi::Float32Array>(env, out.logprobs));
  r.Set("topIds", copyOut<int32_t, Napi::Int32Array>(env, out.topIds));
  r.Set("topLogprobValues", copyOut<float, Napi::Float32Array>(env, out.topLogprobValues));
  r.Set("logits", out.hasLogits ? copyOut<float, Napi::Float32Array>(env, out.logits).As<Napi::Value>() : env.Null());
  r.Set("errors", rowErrors(env, out.errors));
  return r;
}

// sampleToken on one row of logits, for tests of the sampler itself.
Napi::Value SampleLogits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3) throw ArgError("sampleLogits(logits, params, topN): expected 3 arguments");
  const SampleCall c = parseSampleCall(info[0], info[1], info[2]);
  const int vocab = static_cast<int>(c.logits.size);
  const int topN = std::min(c.topN, vocab);
  std::vector<int32_t> topIds(topN, -1);
  std::vector<float> topValues(topN, 0.0f);
  const Sampled s = sampleToken(c.logits.data, vocab, c.params, topN, topIds.data(), topValues.data(), &c.penalties);
  Napi::Object r = Napi::Object::New(env);
  r.Set("token", s.token);
  r.Set("logprob", s.logprob);
  r.Set("topIds", copyOut<int32_t, Napi::Int32Array>(env, topIds));
  r.Set("topValues", copyOut<float, Napi::Float32Array>(env, topValues));
  return r;
}

int slotArg(const Napi::CallbackInfo& info, const char* fn) {
  if (info.Length() < 2 || !info[1].IsNumber()) throw ArgError(std::string(fn) + ": slot must be a number");
  const double d = info[1].As<Napi::Number>().DoubleValue();
  if (d != std::floor(d)) throw ArgError(std::string(fn) + ": slot must be an integer");
  return static_cast<int>(d);
}

Napi::Value LoadLoraSlot(const Napi::CallbackInfo& info) {
  auto e = lookup(info, "loadLoraSlot");
  const int slot = slotArg(info, "loadLoraSlot");
  const AdapterWeights ad = parseAdapter(info.Length() > 2 ? info[2] : info.Env().Undefined());
  // Not under the engine's mutex: the slot table lets steps on other slots run meanwhile.
  e->backend->loadLoraSlot(slot, ad);
  return info.Env().Undefined();
}

Napi::Value ClearLoraSlot(const Napi::CallbackInfo& info) {
  auto e = lookup(info, "clearLoraSlot");
  const int slot = slotArg(info, "clearLoraSlot");
  e->backend->clearLoraSlot(slot);
  return info.Env().Undefined();
}

Napi::Value DestroyEngine(const Napi::CallbackInfo& info) {
  const int64_t h = handleArg(info, "destroyEngine");
  std::shared_ptr<EngineEntry> doomed;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.engines.find(h);
    if (it == r.engines.end()) {
      throw std::invalid_argument("destroyEngine: no engine with handle " + std::to_string(h) + " (destroyed?)");
    }
    doomed = std::move(it->second);
    r.engines.erase(it);
  }
  // Wait for a step in flight on another thread; the memory goes when the last user lets go.
  std::lock_guard<std::mutex> lock(doomed->mu);
  return info.Env().Undefined();
}

// Releases every rank of a tensor-parallel group from its collectives with an error: called when
// one rank's thread died, so the others do not wait for it forever.
Napi::Value AbortTensorParallel(const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    throw ArgError("abortTensorParallel(group, reason): expected two strings");
  }
  const bool found =
      CommGroup::abortGroup(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::String>().Utf8Value());
  return Napi::Boolean::New(info.Env(), found);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("buildInfo", Napi::Function::New<guarded<BuildInfo>>(env, "buildInfo"));
  exports.Set("cudaDeviceCount", Napi::Function::New<guarded<CudaDeviceCount>>(env, "cudaDeviceCount"));
  exports.Set("createEngine", Napi::Function::New<guarded<CreateEngine>>(env, "createEngine"));
  exports.Set("engineInfo", Napi::Function::New<guarded<EngineInfoFn>>(env, "engineInfo"));
  exports.Set("step", Napi::Function::New<guarded<Step>>(env, "step"));
  exports.Set("sampleLogits", Napi::Function::New<guarded<SampleLogits>>(env, "sampleLogits"));
  exports.Set("loadLoraSlot", Napi::Function::New<guarded<LoadLoraSlot>>(env, "loadLoraSlot"));
  exports.Set("clearLoraSlot", Napi::Function::New<guarded<ClearLoraSlot>>(env, "clearLoraSlot"));
  exports.Set("abortTensorParallel", Napi::Function::New<guarded<AbortTensorParallel>>(env, "abortTensorParallel"));
  exports.Set("destroyEngine", Napi::Function::New<guarded<DestroyEngine>>(env, "destroyEngine"));
  initAdapterExports(env, exports);
  return exports;
}

}  // namespace

int64_t handleValue(const Napi::Value& v, const char* fn, const char* what) {
  if (!v.IsNumber()) throw ArgError(std::string(fn) + ": " + what + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (d != std::floor(d) || d < 1 || d > 9007199254740991.0) {
    throw ArgError(std::string(fn) + ": " + what + " must be a positive integer");
  }
  return static_cast<int64_t>(d);
}

std::shared_ptr<EngineEntry> lookupEngine(const Napi::Value& handle, const char* fn) {
  const int64_t h = handleValue(handle, fn, "handle");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.engines.find(h);
  if (it == r.engines.end()) {
    throw std::invalid_argument(std::string(fn) + ": no engine with handle " + std::to_string(h) + " (destroyed?)");
  }
  return it->second;
}

}  // namespace troupe

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return troupe::Init(env, exports); }

NODE_API_MODULE(troupe_native, InitAddon)
