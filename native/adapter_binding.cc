// The addon's adapter functions: host adapters read by native code (readAdapter), their
// explicit release (destroyHostAdapter), filling an engine's pool slot from one
// (fillLoraSlot), exchanging two slots' adapters (swapLoraSlots), and the slot table's test hooks. Reads and fills run
// on libuv's thread pool and return promises, so a loader keeps several in flight and its thread stays free.
#include <napi.h>

#include <cmath>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "binding.h"
#include "host_adapter.h"
#include "js_args.h"
#include "slot_table.h"

namespace troupe {
namespace {

// Host adapters by handle, process-wide like engines, each with the JS environment (thread)
// that read it: when that thread ends, its adapters are freed with it.
struct HostEntry {
  std::shared_ptr<HostAdapter> adapter;
  int64_t owner;
};
struct HostRegistry {
  std::mutex mu;
  std::unordered_map<int64_t, HostEntry> adapters;
  int64_t next = 1;
  int64_t nextEnv = 1;
};
HostRegistry& hosts() {
  static HostRegistry* r = new HostRegistry();
  return *r;
}

struct EnvData {
  int64_t id;
};

int64_t envId(Napi::Env env) { return env.GetInstanceData<EnvData>()->id; }

std::shared_ptr<HostAdapter> lookupHost(const Napi::Value& v, const char* fn) {
  const int64_t h = handleValue(v, fn, "host adapter");
  HostRegistry& r = hosts();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.adapters.find(h);
  if (it == r.adapters.end()) {
    throw std::invalid_argument(std::string(fn) + ": no host adapter with handle " + std::to_string(h) +
                                " (destroyed?)");
  }
  return it->second.adapter;
}

void dropEnvAdapters(void* arg) {
  std::unique_ptr<int64_t> id(static_cast<int64_t*>(arg));
  HostRegistry& r = hosts();
  std::vector<std::shared_ptr<HostAdapter>> doomed;  // freed outside the lock
  std::lock_guard<std::mutex> lock(r.mu);
  for (auto it = r.adapters.begin(); it != r.adapters.end();) {
    if (it->second.owner == *id) {
      doomed.push_back(std::move(it->second.adapter));
      it = r.adapters.erase(it);
    } else {
      ++it;
    }
  }
}

// Runs `work` on the thread pool; the promise resolves with what `done` makes of it on the JS
// thread. A file's bad contents reject with an Error whose invalidAdapter is true.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Done = std::function<Napi::Value(Napi::Env)>;
  PromiseWorker(Napi::Env env, const char* name, std::function<void()> work, Done done)
      : Napi::AsyncWorker(env, name),
        deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)),
        done_(std::move(done)) {}
  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      work_();
    } catch (const AdapterFileError& e) {
      invalidAdapter_ = true;
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      SetError("out of memory");
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  // A read can finish while its thread is being terminated (the engine closing with a load in
  // flight): then no JS can run, every call into it throws, and an exception leaving these
  // callbacks would abort the whole process. Nobody awaits the promise any more, so the result
  // is dropped (a read adapter not yet registered is freed with this worker).
  void OnOK() override {
    try {
      deferred_.Resolve(done_ ? done_(Env()) : Env().Undefined());
    } catch (const Napi::Error&) {
    }
  }
  void OnError(const Napi::Error& e) override {
    try {
      Napi::Object err = e.Value();
      if (invalidAdapter_) err.Set("invalidAdapter", true);
      deferred_.Reject(err);
    } catch (const Napi::Error&) {
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<void()> work_;
  Done done_;
  bool invalidAdapter_ = false;
};

Napi::Value startWorker(Napi::Env env, const char* name, std::function<void()> work,
                        PromiseWorker::Done done = nullptr) {
  auto* w = new PromiseWorker(env, name, std::move(work), std::move(done));  // deletes itself when done
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value ReadAdapter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2) throw ArgError("readAdapter(adapter, options): expected 2 arguments");
  auto spec = std::make_shared<AdapterFileSpec>(parseAdapterFile(info[0], info[1]));
  auto result = std::make_shared<std::shared_ptr<HostAdapter>>();
  const int64_t owner = envId(env);
  return startWorker(
      env, "troupe.readAdapter", [spec, result] { *result = HostAdapter::read(*spec); },
      [result, owner](Napi::Env e) -> Napi::Value {
        HostRegistry& r = hosts();
        int64_t h;
        {
          std::lock_guard<std::mutex> lock(r.mu);
          h = r.next++;
          r.adapters[h] = HostEntry{*result, owner};
        }
        Napi::Object o = Napi::Object::New(e);
        o.Set("handle", static_cast<double>(h));
        o.Set("bytes", static_cast<double>((*result)->bytes()));
        o.Set("pageLocked", (*result)->pageLocked());
        return o;
      });
}

Napi::Value DestroyHostAdapter(const Napi::CallbackInfo& info) {
  const int64_t h =
      handleValue(info.Length() < 1 ? info.Env().Undefined() : info[0], "destroyHostAdapter", "host adapter");
  std::shared_ptr<HostAdapter> doomed;  // a fill still copying from it holds it until done
  HostRegistry& r = hosts();
  {
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.adapters.find(h);
    if (it == r.adapters.end()) {
      throw std::invalid_argument("destroyHostAdapter: no host adapter with handle " + std::to_string(h) +
                                  " (destroyed?)");
    }
    doomed = std::move(it->second.adapter);
    r.adapters.erase(it);
  }
  return info.Env().Undefined();
}

int slotValue(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (info.Length() <= i || !info[i].IsNumber()) throw ArgError(std::string(fn) + ": slot must be a number");
  const double d = info[i].As<Napi::Number>().DoubleValue();
  if (d != std::floor(d) || d < -2147483648.0 || d > 2147483647.0)
    throw ArgError(std::string(fn) + ": slot must be an integer");
  return static_cast<int>(d);
}

Napi::Value FillLoraSlot(const Napi::CallbackInfo& info) {
  if (info.Length() < 3) throw ArgError("fillLoraSlot(handle, slot, host, slices?): expected 3 or 4 arguments");
  auto engine = lookupEngine(info[0], "fillLoraSlot");
  const int slot = slotValue(info, 1, "fillLoraSlot");
  auto host = lookupHost(info[2], "fillLoraSlot");
  const std::vector<ModuleSlice> slices = parseSlices(info.Length() > 3 ? info[3] : info.Env().Undefined());
  // The engine and the host buffer live until the copy is done, whatever is destroyed meanwhile.
  return startWorker(info.Env(), "troupe.fillLoraSlot",
                     [engine, host, slot, slices] { engine->backend->loadLoraSlot(slot, host->weights(slices)); });
}

Napi::Value SwapLoraSlots(const Napi::CallbackInfo& info) {
  if (info.Length() != 3) throw ArgError("swapLoraSlots(handle, a, b): expected 3 arguments");
  auto engine = lookupEngine(info[0], "swapLoraSlots");
  const int a = slotValue(info, 1, "swapLoraSlots");
  const int b = slotValue(info, 2, "swapLoraSlots");
  return startWorker(info.Env(), "troupe.swapLoraSlots", [engine, a, b] { engine->backend->swapLoraSlots(a, b); });
}

SlotTable& tableOf(const std::shared_ptr<EngineEntry>& e, const char* fn) {
  SlotTable* t = e->backend->loraSlotTable();
  if (!t) throw std::invalid_argument(std::string(fn) + ": this engine has no LoRA pool (loraSlots 0)");
  return *t;
}

// Test hooks (test/engine-overlap.test.ts): hold the writes of a slot, release them, and wait
// until a write is stopped at the hold or a step waits for the slot.
Napi::Value HoldLoraSlotWrites(const Napi::CallbackInfo& info) {
  auto e = lookupEngine(info.Length() < 1 ? info.Env().Undefined() : info[0], "holdLoraSlotWrites");
  tableOf(e, "holdLoraSlotWrites").hold(slotValue(info, 1, "holdLoraSlotWrites"));
  return info.Env().Undefined();
}

Napi::Value ReleaseLoraSlotWrites(const Napi::CallbackInfo& info) {
  auto e = lookupEngine(info.Length() < 1 ? info.Env().Undefined() : info[0], "releaseLoraSlotWrites");
  tableOf(e, "releaseLoraSlotWrites").release(slotValue(info, 1, "releaseLoraSlotWrites"));
  return info.Env().Undefined();
}

Napi::Value WaitForLoraSlot(const Napi::CallbackInfo& info) {
  auto e = lookupEngine(info.Length() < 1 ? info.Env().Undefined() : info[0], "waitForLoraSlot");
  const int slot = slotValue(info, 1, "waitForLoraSlot");
  const std::string what = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
  if (what != "write-held" && what != "step-waiting") {
    throw ArgError("waitForLoraSlot: the event must be \"write-held\" or \"step-waiting\"");
  }
  SlotTable* t = &tableOf(e, "waitForLoraSlot");
  if (slot < 0 || slot >= t->size()) {
    throw std::invalid_argument("waitForLoraSlot: slot " + std::to_string(slot) + " is outside [0, " +
                                std::to_string(t->size()) + ")");
  }
  const auto ev = what == "write-held" ? SlotTable::Event::kWriteHeld : SlotTable::Event::kStepWaiting;
  return startWorker(info.Env(), "troupe.waitForLoraSlot", [e, t, slot, ev] { t->waitFor(slot, ev); });
}

}  // namespace

void initAdapterExports(Napi::Env env, Napi::Object exports) {
  int64_t id;
  {
    HostRegistry& r = hosts();
    std::lock_guard<std::mutex> lock(r.mu);
    id = r.nextEnv++;
  }
  env.SetInstanceData(new EnvData{id});
  napi_add_env_cleanup_hook(env, dropEnvAdapters, new int64_t(id));
  exports.Set("readAdapter", Napi::Function::New<guarded<ReadAdapter>>(env, "readAdapter"));
  exports.Set("destroyHostAdapter", Napi::Function::New<guarded<DestroyHostAdapter>>(env, "destroyHostAdapter"));
  exports.Set("fillLoraSlot", Napi::Function::New<guarded<FillLoraSlot>>(env, "fillLoraSlot"));
  exports.Set("swapLoraSlots", Napi::Function::New<guarded<SwapLoraSlots>>(env, "swapLoraSlots"));
  exports.Set("holdLoraSlotWrites", Napi::Function::New<guarded<HoldLoraSlotWrites>>(env, "holdLoraSlotWrites"));
  exports.Set("releaseLoraSlotWrites",
              Napi::Function::New<guarded<ReleaseLoraSlotWrites>>(env, "releaseLoraSlotWrites"));
  exports.Set("waitForLoraSlot", Napi::Function::New<guarded<WaitForLoraSlot>>(env, "waitForLoraSlot"));
}

}  // namespace troupe
