// Conversion of the JS arguments of the addon's functions (src/engine/types.ts) into the
// structs of backend.h. A value of the wrong type throws ArgError naming the field; binding.cc
// turns it into a TypeError.
#pragma once

#include <napi.h>

#include <stdexcept>
#include <vector>

#include "backend.h"
#include "host_adapter.h"
#include "sampling.h"

namespace troupe {

class ArgError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

ModelConfig parseConfig(const Napi::Value& v);
std::vector<TensorRef> parseTensors(const Napi::Value& v);
EngineOptions parseOptions(const Napi::Value& v);
// The views point into the batch's typed arrays: valid while the call that received them runs.
StepBatch parseBatch(const Napi::Value& v);
AdapterWeights parseAdapter(const Napi::Value& v);
// readAdapter(adapter, options): the file's tensors as the JS side checked them.
AdapterFileSpec parseAdapterFile(const Napi::Value& v, const Napi::Value& options);
// fillLoraSlot's per-module slices, indexed by module; empty when absent (everything whole).
std::vector<ModuleSlice> parseSlices(const Napi::Value& v);

// The arguments of sampleLogits(logits, params, topN), one direct call of sampleToken. Any
// number is accepted where the native types can hold it (NaN and Inf included), so tests can
// reach every value a batch can carry; absent params take their "off" value.
struct SampleCall {
  Span<float> logits;
  SamplingParams params{1.0f, -1, 1.0f, 0.0f, 0, 0};
  Penalties penalties;
  int topN = 0;
};
SampleCall parseSampleCall(const Napi::Value& logits, const Napi::Value& params, const Napi::Value& topN);

}  // namespace troupe
