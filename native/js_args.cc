#include "js_args.h"

#include <cmath>
#include <string>

namespace troupe {
namespace {

Napi::Object object(const Napi::Value& v, const std::string& what) {
  if (!v.IsObject() || v.IsArray()) throw ArgError(what + " must be an object");
  return v.As<Napi::Object>();
}

double number(const Napi::Object& o, const char* key, const std::string& what) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw ArgError(what + "." + key + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throw ArgError(what + "." + key + " must be finite");
  return d;
}

int integer(const Napi::Object& o, const char* key, const std::string& what, int min) {
  const double d = number(o, key, what);
  if (d != std::floor(d) || d < min || d > 2147483647.0) {
    throw ArgError(what + "." + key + " must be an integer >= " + std::to_string(min) + ", got " + std::to_string(d));
  }
  return static_cast<int>(d);
}

bool boolean(const Napi::Object& o, const char* key, const std::string& what) {
  Napi::Value v = o.Get(key);
  if (!v.IsBoolean()) throw ArgError(what + "." + key + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::string string(const Napi::Object& o, const char* key, const std::string& what) {
  Napi::Value v = o.Get(key);
  if (!v.IsString()) throw ArgError(what + "." + key + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

template <class T>
Span<T> typedArray(const Napi::Object& o, const char* key, napi_typedarray_type type, const char* typeName,
                   const std::string& what) {
  Napi::Value v = o.Get(key);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
    throw ArgError(what + "." + key + " must be " + typeName);
  }
  auto a = v.As<Napi::TypedArrayOf<T>>();
  return Span<T>{a.Data(), a.ElementLength()};
}

// The typed arrays of a batch, by element type.
Span<int32_t> i32(const Napi::Object& o, const char* key, const std::string& what) {
  return typedArray<int32_t>(o, key, napi_int32_array, "an Int32Array", what);
}
Span<float> f32(const Napi::Object& o, const char* key, const std::string& what) {
  return typedArray<float>(o, key, napi_float32_array, "a Float32Array", what);
}
Span<uint32_t> u32(const Napi::Object& o, const char* key, const std::string& what) {
  return typedArray<uint32_t>(o, key, napi_uint32_array, "a Uint32Array", what);
}

DType parseDType(const std::string& s, const std::string& what) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  throw ArgError(what + " has dtype " + s + ", expected F32, F16 or BF16");
}

LoraModule parseModule(const std::string& s, const std::string& what) {
  for (int m = 0; m < kNumLoraModules; ++m)
    if (s == kLoraModuleNames[m]) return static_cast<LoraModule>(m);
  throw ArgError(what + ": unknown LoRA module \"" + s +
                 "\" (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj)");
}

// An optional number of any value (NaN and Inf included); fallback when absent.
double anyNumber(const Napi::Object& o, const char* key, const std::string& what, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber()) throw ArgError(what + "." + key + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

// As Float32Array stores a double: beyond float's range is +/-Inf (a plain cast would be undefined).
float toFloat(double d) {
  if (std::fabs(d) >= 3.4028235677973366e38) return static_cast<float>(std::copysign(INFINITY, d));
  return static_cast<float>(d);
}

// An optional integer in [lo, hi]; fallback when absent.
double integerIn(const Napi::Object& o, const char* key, const std::string& what, double lo, double hi,
                 double fallback) {
  const double d = anyNumber(o, key, what, fallback);
  if (d != std::floor(d) || d < lo || d > hi) {
    throw ArgError(what + "." + key + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                   "]");
  }
  return d;
}

// Values given without a shape: checkAdapter shapes them.
FactorView flatView(Span<float> v) {
  const int64_t n = static_cast<int64_t>(v.size);
  return FactorView{v.data, DType::F32, 1, n, 0, 0, 1, n, true};
}

}  // namespace

ModelConfig parseConfig(const Napi::Value& v) {
  const std::string w = "createEngine: config";
  Napi::Object o = object(v, w);
  ModelConfig c;
  c.architecture = string(o, "architecture", w);
  c.hiddenSize = integer(o, "hiddenSize", w, 1);
  c.intermediateSize = integer(o, "intermediateSize", w, 1);
  c.numLayers = integer(o, "numLayers", w, 1);
  c.numHeads = integer(o, "numHeads", w, 1);
  c.numKvHeads = integer(o, "numKvHeads", w, 1);
  c.headDim = integer(o, "headDim", w, 2);
  c.vocabSize = integer(o, "vocabSize", w, 1);
  c.rmsNormEps = number(o, "rmsNormEps", w);
  c.ropeTheta = number(o, "ropeTheta", w);
  c.maxPositionEmbeddings = integer(o, "maxPositionEmbeddings", w, 1);
  c.tieWordEmbeddings = boolean(o, "tieWordEmbeddings", w);
  c.qkvBias = boolean(o, "qkvBias", w);
  c.qkNorm = boolean(o, "qkNorm", w);
  c.slidingWindow = integer(o, "slidingWindow", w, 0);
  if (c.numHeads % c.numKvHeads != 0) {
    throw std::invalid_argument(w + ": numHeads " + std::to_string(c.numHeads) + " is not a multiple of numKvHeads " +
                                std::to_string(c.numKvHeads));
  }
  if (c.headDim % 2 != 0) throw std::invalid_argument(w + ": headDim must be even for rotary embeddings");
  if (!(c.ropeTheta > 0)) throw std::invalid_argument(w + ": ropeTheta must be positive");
  Napi::Value rs = o.Get("ropeScaling");
  if (!rs.IsNull() && !rs.IsUndefined()) {
    const std::string ws = w + ".ropeScaling";
    Napi::Object s = object(rs, ws);
    c.hasRopeScaling = true;
    c.ropeScaling.factor = number(s, "factor", ws);
    c.ropeScaling.lowFreqFactor = number(s, "lowFreqFactor", ws);
    c.ropeScaling.highFreqFactor = number(s, "highFreqFactor", ws);
    c.ropeScaling.originalMaxPositionEmbeddings = number(s, "originalMaxPositionEmbeddings", ws);
    if (!(c.ropeScaling.factor > 0) || !(c.ropeScaling.lowFreqFactor > 0) ||
        !(c.ropeScaling.highFreqFactor > c.ropeScaling.lowFreqFactor) ||
        !(c.ropeScaling.originalMaxPositionEmbeddings > 0)) {
      throw std::invalid_argument(
          ws + ": needs factor > 0, 0 < lowFreqFactor < highFreqFactor and originalMaxPositionEmbeddings > 0");
    }
  }
  return c;
}

std::vector<TensorRef> parseTensors(const Napi::Value& v) {
  if (!v.IsArray()) throw ArgError("createEngine: tensors must be an array");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<TensorRef> out(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) {
    const std::string w = "createEngine: tensors[" + std::to_string(i) + "]";
    Napi::Object o = object(a.Get(i), w);
    TensorRef& t = out[i];
    t.name = string(o, "name", w);
    t.file = string(o, "file", w);
    const double off = number(o, "offset", w), nb = number(o, "nbytes", w);
    if (off < 0 || nb < 0 || off != std::floor(off) || nb != std::floor(nb)) {
      throw ArgError(w + " (" + t.name + "): offset and nbytes must be non-negative integers");
    }
    t.offset = static_cast<int64_t>(off);
    t.nbytes = static_cast<int64_t>(nb);
    t.dtype = parseDType(string(o, "dtype", w), w + " (" + t.name + ")");
    Napi::Value sv = o.Get("shape");
    if (!sv.IsArray()) throw ArgError(w + " (" + t.name + "): shape must be an array");
    Napi::Array s = sv.As<Napi::Array>();
    for (uint32_t j = 0; j < s.Length(); ++j) {
      Napi::Value d = s.Get(j);
      if (!d.IsNumber() || d.As<Napi::Number>().DoubleValue() < 0) {
        throw ArgError(w + " (" + t.name + "): shape must hold non-negative integers");
      }
      t.shape.push_back(d.As<Napi::Number>().Int64Value());
    }
    Napi::Value pitch = o.Get("rowPitch");
    if (!pitch.IsUndefined()) {
      const double p = number(o, "rowPitch", w);
      if (p < 0 || p != std::floor(p)) throw ArgError(w + " (" + t.name + "): rowPitch must be a non-negative integer");
      t.rowPitch = static_cast<int64_t>(p);
    }
  }
  return out;
}

EngineOptions parseOptions(const Napi::Value& v) {
  const std::string w = "createEngine: options";
  Napi::Object o = object(v, w);
  EngineOptions e;
  e.device = string(o, "device", w);
  if (e.device != "cpu" && e.device != "cuda") throw ArgError(w + ".device must be \"cpu\" or \"cuda\"");
  e.blockSize = integer(o, "blockSize", w, 1);
  e.kvBlocks = integer(o, "kvBlocks", w, 0);
  e.memFractionStatic = number(o, "memFractionStatic", w);
  e.loraSlots = integer(o, "loraSlots", w, 0);
  e.maxLoraRank = integer(o, "maxLoraRank", w, 0);
  if (o.Has("loraSlotRank") && !o.Get("loraSlotRank").IsUndefined()) e.loraSlotRank = integer(o, "loraSlotRank", w, 1);
  e.threads = integer(o, "threads", w, 0);
  e.cudaGraphMaxBs = integer(o, "cudaGraphMaxBs", w, 0);
  if (o.Has("loraBackend") && !o.Get("loraBackend").IsUndefined()) {
    const std::string backend = string(o, "loraBackend", w);
    if (backend != "csgmv" && backend != "sgmv") throw ArgError(w + ".loraBackend must be \"csgmv\" or \"sgmv\"");
    e.loraSgmv = backend == "sgmv";
  }
  if (o.Has("loraChunkSize") && !o.Get("loraChunkSize").IsUndefined())
    e.loraChunkSize = integer(o, "loraChunkSize", w, 1);
  if (o.Has("loraKernel") && !o.Get("loraKernel").IsUndefined()) {
    const std::string kernel = string(o, "loraKernel", w);
    e.loraKernel = loraKernelNamed(kernel);
    if (e.loraKernel == LoraKernel::kAuto)
      throw ArgError(w + ".loraKernel must be " + loraKernelNameList() + ", got \"" + kernel + "\"");
  }
  if (o.Has("cudaDevice") && !o.Get("cudaDevice").IsUndefined()) e.cudaDevice = integer(o, "cudaDevice", w, 0);
  if (o.Has("customAllReduce") && !o.Get("customAllReduce").IsUndefined())
    e.customAllReduce = boolean(o, "customAllReduce", w);
  Napi::Value tv = o.Get("tp");
  if (!tv.IsUndefined()) {
    const std::string wt = w + ".tp";
    Napi::Object t = object(tv, wt);
    e.tp.rank = integer(t, "rank", wt, 0);
    e.tp.size = integer(t, "size", wt, 1);
    e.tp.group = string(t, "group", wt);
    e.tp.numHeads = integer(t, "numHeads", wt, 1);
    e.tp.numKvHeads = integer(t, "numKvHeads", wt, 1);
    e.tp.intermediateSize = integer(t, "intermediateSize", wt, 1);
    e.tp.vocabStart = integer(t, "vocabStart", wt, 0);
    e.tp.vocabCount = integer(t, "vocabCount", wt, 0);
    e.tp.vocabPart = integer(t, "vocabPart", wt, 1);
  }
  Napi::Value mv = o.Get("loraModules");
  if (!mv.IsArray()) throw ArgError(w + ".loraModules must be an array of module names");
  Napi::Array mods = mv.As<Napi::Array>();
  for (uint32_t i = 0; i < mods.Length(); ++i) {
    Napi::Value m = mods.Get(i);
    if (!m.IsString()) throw ArgError(w + ".loraModules[" + std::to_string(i) + "] must be a string");
    e.loraModuleMask |= 1u << parseModule(m.As<Napi::String>().Utf8Value(), w + ".loraModules");
  }
  return e;
}

namespace {

void parseColumns(const Napi::Object& o, const std::string& w, SamplingColumns& c) {
  c.temperature = f32(o, "temperature", w);
  c.topK = i32(o, "topK", w);
  c.topP = f32(o, "topP", w);
  c.minP = f32(o, "minP", w);
  c.frequencyPenalty = f32(o, "frequencyPenalty", w);
  c.presencePenalty = f32(o, "presencePenalty", w);
  c.repetitionPenalty = f32(o, "repetitionPenalty", w);
  c.penaltyTokens = i32(o, "penaltyTokens", w);
  c.penaltyStarts = i32(o, "penaltyStarts", w);
  c.penaltyPromptLens = i32(o, "penaltyPromptLens", w);
  c.seeds = u32(o, "seeds", w);
}

}  // namespace

StepBatch parseBatch(const Napi::Value& v) {
  const std::string w = "step: batch";
  Napi::Object o = object(v, w);
  StepBatch b;
  b.tokens = i32(o, "tokens", w);
  b.positions = i32(o, "positions", w);
  b.seqStarts = i32(o, "seqStarts", w);
  b.contextLens = i32(o, "contextLens", w);
  b.loraSlots = i32(o, "loraSlots", w);
  b.sample = typedArray<uint8_t>(o, "sample", napi_uint8_array, "a Uint8Array", w);
  b.draws = u32(o, "draws", w);
  // The resident form names each row's sequence slot (filling the slots of sequences new to
  // them) and the blocks each row gained; the other carries every row's values and blocks.
  if (o.Get("seqSlots").IsUndefined()) {
    parseColumns(o, w, b);
    b.blockTables = i32(o, "blockTables", w);
    b.maxBlocksPerSeq = integer(o, "maxBlocksPerSeq", w, 0);
  } else {
    b.resident = true;
    b.seqSlots = i32(o, "seqSlots", w);
    b.blockAppends = i32(o, "blockAppends", w);
    b.blockAppendStarts = i32(o, "blockAppendStarts", w);
    Napi::Value u = o.Get("seqUpdate");
    if (!u.IsUndefined()) {
      const std::string wu = w + ".seqUpdate";
      Napi::Object uo = object(u, wu);
      b.seqUpdate.slots = i32(uo, "slots", wu);
      parseColumns(uo, wu, b.seqUpdate);
    }
  }
  b.topLogprobs = integer(o, "topLogprobs", w, 0);
  b.returnLogits = boolean(o, "returnLogits", w);
  return b;
}

AdapterWeights parseAdapter(const Napi::Value& v) {
  const std::string w = "loadLoraSlot: adapter";
  Napi::Object o = object(v, w);
  AdapterWeights ad;
  ad.rank = integer(o, "rank", w, 1);
  ad.scaling = number(o, "scaling", w);
  Napi::Value wv = o.Get("weights");
  if (!wv.IsArray()) throw ArgError(w + ".weights must be an array");
  Napi::Array arr = wv.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    const std::string wi = w + ".weights[" + std::to_string(i) + "]";
    Napi::Object m = object(arr.Get(i), wi);
    AdapterModuleWeights mw;
    mw.layer = integer(m, "layer", wi, 0);
    mw.module = parseModule(string(m, "module", wi), wi);
    mw.a = flatView(typedArray<float>(m, "a", napi_float32_array, "a Float32Array", wi));
    mw.b = flatView(typedArray<float>(m, "b", napi_float32_array, "a Float32Array", wi));
    ad.weights.push_back(mw);
  }
  return ad;
}

AdapterFileSpec parseAdapterFile(const Napi::Value& v, const Napi::Value& options) {
  const std::string w = "readAdapter: adapter";
  Napi::Object o = object(v, w);
  AdapterFileSpec spec;
  spec.file = string(o, "file", w);
  spec.rank = integer(o, "rank", w, 1);
  spec.scaling = number(o, "scaling", w);
  Napi::Value tv = o.Get("tensors");
  if (!tv.IsArray()) throw ArgError(w + ".tensors must be an array");
  Napi::Array arr = tv.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    const std::string wi = w + ".tensors[" + std::to_string(i) + "]";
    Napi::Object t = object(arr.Get(i), wi);
    AdapterTensor at;
    at.name = string(t, "name", wi);
    at.layer = integer(t, "layer", wi, 0);
    at.module = parseModule(string(t, "module", wi), wi);
    const std::string factor = string(t, "factor", wi);
    if (factor != "A" && factor != "B") throw ArgError(wi + ".factor must be \"A\" or \"B\"");
    at.isB = factor == "B";
    at.offset = static_cast<int64_t>(integerIn(t, "offset", wi, 0, 9007199254740991.0, -1));
    at.nbytes = static_cast<int64_t>(integerIn(t, "nbytes", wi, 0, 9007199254740991.0, -1));
    at.dtype = parseDType(string(t, "dtype", wi), wi);
    Napi::Value sv = t.Get("shape");
    if (!sv.IsArray() || sv.As<Napi::Array>().Length() != 2) throw ArgError(wi + ".shape must be [rows, cols]");
    Napi::Array shape = sv.As<Napi::Array>();
    for (uint32_t k = 0; k < 2; ++k) {
      Napi::Value d = shape.Get(k);
      if (!d.IsNumber()) throw ArgError(wi + ".shape must hold two numbers");
      const double x = d.As<Napi::Number>().DoubleValue();
      if (x != std::floor(x) || x < 1 || x > 2147483647.0) throw ArgError(wi + ".shape must hold positive integers");
      (k == 0 ? at.rows : at.cols) = static_cast<int64_t>(x);
    }
    spec.tensors.push_back(at);
  }
  Napi::Object opts = object(options, "readAdapter: options");
  spec.pageLocked = boolean(opts, "pageLocked", "readAdapter: options");
  return spec;
}

std::vector<ModuleSlice> parseSlices(const Napi::Value& v) {
  std::vector<ModuleSlice> out;
  if (v.IsUndefined() || v.IsNull()) return out;
  const std::string w = "fillLoraSlot: slices";
  if (!v.IsArray()) throw ArgError(w + " must be an array");
  out.assign(kNumLoraModules, ModuleSlice{});
  Napi::Array arr = v.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    const std::string wi = w + "[" + std::to_string(i) + "]";
    Napi::Object s = object(arr.Get(i), wi);
    ModuleSlice& m = out[parseModule(string(s, "module", wi), wi)];
    m.inStart = integer(s, "inStart", wi, 0);
    m.inCount = integer(s, "inCount", wi, 0);
    m.outStart = integer(s, "outStart", wi, 0);
    m.outCount = integer(s, "outCount", wi, 0);
  }
  return out;
}

SampleCall parseSampleCall(const Napi::Value& logits, const Napi::Value& params, const Napi::Value& topN) {
  const std::string w = "sampleLogits";
  if (!logits.IsTypedArray() || logits.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    throw ArgError(w + ": logits must be a Float32Array");
  }
  auto a = logits.As<Napi::Float32Array>();
  SampleCall c;
  c.logits = Span<float>{a.Data(), a.ElementLength()};
  if (c.logits.size == 0 || c.logits.size > 2147483647u) throw ArgError(w + ": logits must hold 1 to 2^31-1 values");
  const std::string wp = w + ": params";
  Napi::Object o = object(params, wp);
  SamplingParams& p = c.params;
  p.temperature = toFloat(anyNumber(o, "temperature", wp, p.temperature));
  p.topK = static_cast<int>(integerIn(o, "topK", wp, -2147483648.0, 2147483647.0, p.topK));
  p.topP = toFloat(anyNumber(o, "topP", wp, p.topP));
  p.minP = toFloat(anyNumber(o, "minP", wp, p.minP));
  p.seed = static_cast<uint32_t>(integerIn(o, "seed", wp, 0, 4294967295.0, 0));
  p.draws = static_cast<uint32_t>(integerIn(o, "draws", wp, 0, 4294967295.0, 0));
  Penalties& pen = c.penalties;
  pen.frequency = toFloat(anyNumber(o, "frequencyPenalty", wp, 0));
  pen.presence = toFloat(anyNumber(o, "presencePenalty", wp, 0));
  pen.repetition = toFloat(anyNumber(o, "repetitionPenalty", wp, 1));
  if (!o.Get("penaltyTokens").IsUndefined()) {
    const Span<int32_t> t = typedArray<int32_t>(o, "penaltyTokens", napi_int32_array, "an Int32Array", wp);
    pen.tokens = t.data;
    pen.count = static_cast<int>(t.size);
  }
  pen.promptLen = static_cast<int>(integerIn(o, "promptLen", wp, -2147483648.0, 2147483647.0, 0));
  if (!topN.IsNumber()) throw ArgError(w + ": topN must be a number");
  const double n = topN.As<Napi::Number>().DoubleValue();
  if (n != std::floor(n) || n < 0 || n > 2147483647.0) throw ArgError(w + ": topN must be a non-negative integer");
  c.topN = static_cast<int>(n);
  return c;
}

}  // namespace troupe
