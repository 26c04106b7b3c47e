// Conversion of the JS arguments of the addon's functions (src/engine/types.ts) into the
// structs of backend.h. A value of the wrong type throws ArgError naming the field; binding.cc
// turns it into a TypeError.
#pragma once

#include <napi.h>

#include <stdexcept>
#include <vector>

#include "backend.h"

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

}  // namespace troupe
