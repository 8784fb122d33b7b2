#include "runtime/cuda/cuda_layer.h"

#include "runtime/base/status_macros.h"

namespace hyla::cuda {

absl::StatusOr<int32_t> CudaContext::WritableBlock(SequenceState* seq, int stream,
                                                   int64_t chunk) const {
  int32_t copy_from = -1;
  HYLA_ASSIGN_OR_RETURN(int index, store->PrepareAppend(seq, stream, chunk, &copy_from));
  const int32_t block = seq->streams[stream][index].block;
  if (copy_from >= 0) {
    HYLA_RETURN_IF_ERROR(
        dev->CopyDeviceToDevice(BlockData(block), BlockData(copy_from), layout->block_bytes()));
  }
  return block;
}

}  // namespace hyla::cuda
