// The sampling values of the engine's running sequences kept on the device, by sequence slot
// (sequence_table.h), so that a step in the resident form sends each sampled row's slot, draw and
// mode and nothing of its values or history. A slot's values are stored the first time it samples
// after a step's update fills it. A sequence that samples with a penalty also keeps its tokens'
// counts there, a row of the vocabulary (SampleInputs::counts) that the sampling kernel reads and
// adds its token to; a token the host samples for it is added after the step.
#pragma once

#include <cstdint>
#include <vector>

#include "backend.h"
#include "cuda/device.h"
#include "cuda/kernels.h"

namespace troupe {
namespace cuda {

class SampleTable {
 public:
  // Its copies and kernels go on stream, the sampling kernels'.
  SampleTable(int vocab, cudaStream_t stream) : vocab_(vocab), stream_(stream) {}

  // The slots of a step's update take new sequences: each is stored again before it samples.
  void updated(const SeqUpdate& u);
  // Before a step's rows: nothing staged.
  void begin();
  // Batch row i samples as `row` (its values, mode and draw). Stages the slot's values if the slot
  // is new, and returns the row's count row, or -1 where the row's penalties (if any) must come
  // from a token list (no device memory was left for a count row).
  int32_t prepare(const StepBatch& b, size_t i, const SampleRow& row);
  // Writes what prepare staged (before the sampling kernel).
  void upload();
  // After the host sampled batch row i's token: counted in its count row, if it has one.
  void countHostToken(const StepBatch& b, size_t i, int32_t token);
  // Writes those counts.
  void uploadHostCounts();

  const SampleRow* rows() const { return table_.get(); }
  int32_t* counts() const { return counts_.get(); }

 private:
  struct Slot {
    bool stored = false;
    int32_t countRow = -1;
  };
  // The count row for slot s (its own, a free one, or a new one); -1 if none can be had.
  int32_t takeCountRow(Slot& s);

  const int vocab_;
  const cudaStream_t stream_;
  std::vector<Slot> slots_;
  std::vector<int32_t> freeRows_;
  int32_t countRows_ = 0;  // rows of counts_ handed out so far
  DeviceBuffer<SampleRow> table_;
  DeviceBuffer<int32_t> counts_;
  // Staged by prepare and countHostToken.
  std::vector<int32_t> stagedSlots_;
  std::vector<SampleRow> stagedRows_;
  std::vector<int32_t> clearRows_;
  std::vector<int3> countEntries_, hostCounts_;
  DeviceBuffer<int32_t> uploadSlots_;
  DeviceBuffer<SampleRow> uploadRows_;
  DeviceBuffer<int3> uploadEntries_, uploadHostEntries_;
};

}  // namespace cuda
}  // namespace troupe
