// CUDA kernel for Most-Similar RoI Align (see troi_cuda.cuh for the contract).
//
// One thread per output cell and frame, i.e. per (t, r, i, j). Threads are
// numbered frame-major, then RoI, then cell, so the threads of a warp mostly
// share one support frame: their support loads hit the same address (a
// broadcast), while query loads and output stores are coalesced over cells.
// The channel loop is a plain loop, so any C works; the top-k is the running
// list of troiMostSimilarCell, in registers. Nothing is allocated.

#include "troi_cuda.cuh"

#include <cuda_runtime.h>

namespace
{

constexpr int kThreadsPerBlock = 128;
constexpr int64_t kMaxBlocks = int64_t{1} << 20; // grid-stride loop beyond this

__global__ void __launch_bounds__(kThreadsPerBlock) mostSimilarRoiAlignKernel(cellwatch::TroiParams params)
{
    int64_t const perFrame = params.numRois * params.cellsPerRoi;
    int64_t const total = params.frames * perFrame;
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total;
         index += stride)
    {
        int64_t const frame = index / perFrame;
        int64_t const rest = index - frame * perFrame;
        int64_t const roi = rest / params.cellsPerRoi;
        int64_t const cell = rest - roi * params.cellsPerRoi;
        cellwatch::troiOutputCell(params, frame, roi, cell);
    }
}

} // namespace

extern "C" int32_t cellwatch_troi_cuda(float const* roi_feats, int64_t const* levels, int64_t const* batch_index,
    float const* const* supports, int64_t const* support_heights, int64_t const* support_widths, int32_t num_levels,
    int64_t num_rois, int64_t channels, int64_t roi_height, int64_t roi_width, int64_t batch, int64_t frames,
    int32_t k, float* out, cudaStream_t stream)
{
    cellwatch::TroiParams params;
    int32_t const status = cellwatch::troiMakeParams(roi_feats, levels, batch_index, supports, support_heights,
        support_widths, num_levels, num_rois, channels, roi_height, roi_width, batch, frames, k, out, &params);
    if (status != cellwatch::kTroiOk)
    {
        return status;
    }
    int64_t const total = frames * num_rois * params.cellsPerRoi;
    if (total == 0)
    {
        return cellwatch::kTroiOk;
    }
    int64_t blocks = (total + kThreadsPerBlock - 1) / kThreadsPerBlock;
    blocks = blocks < kMaxBlocks ? blocks : kMaxBlocks;
    mostSimilarRoiAlignKernel<<<static_cast<unsigned int>(blocks), kThreadsPerBlock, 0, stream>>>(params);
    return cudaGetLastError() == cudaSuccess ? cellwatch::kTroiOk : cellwatch::kTroiCudaError;
}

extern "C" char const* cellwatch_troi_status_string(int32_t status)
{
    return cellwatch::troiStatusString(status);
}
