// What the Node-API files share: the process-wide engine registry (binding.cc) and the
// translation of C++ exceptions into JS errors.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>

#include "backend.h"
#include "js_args.h"
#include "sequence_table.h"

namespace troupe {

struct EngineEntry {
  std::mutex mu;  // one step (or info call) at a time per engine; slot fills do not take it
  std::unique_ptr<Backend> backend;
  SequenceTable sequences;  // the resident form's per-sequence state, read and written under mu
};

// The engine behind a handle argument; throws naming `fn` when there is none.
std::shared_ptr<EngineEntry> lookupEngine(const Napi::Value& handle, const char* fn);

// A positive integer handle argument.
int64_t handleValue(const Napi::Value& v, const char* fn, const char* what);

// C++ exceptions become JS errors: argument type problems as TypeError, the rest as Error.
template <Napi::Value (*F)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  try {
    return F(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const ArgError& e) {
    throw Napi::TypeError::New(info.Env(), e.what());
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(info.Env(), "out of memory");
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
}

// The exports of adapter_binding.cc: host adapters (readAdapter, destroyHostAdapter), filling
// pool slots from them (fillLoraSlot) and the slot table's test hooks.
void initAdapterExports(Napi::Env env, Napi::Object exports);

}  // namespace troupe
