// CPU entry point for Most-Similar RoI Align: the per-cell code of
// troi_cuda.cuh compiled by g++ into a shared library, so the code the CUDA
// kernel runs is checked on machines without a GPU (export/kernels/build.py
// builds and loads it). Same arguments as cellwatch_troi_cuda, all host memory.

#include "troi_cuda.cuh"

extern "C" int32_t cellwatch_troi_cpu(float const* roi_feats, int64_t const* levels, int64_t const* batch_index,
    float const* const* supports, int64_t const* support_heights, int64_t const* support_widths, int32_t num_levels,
    int64_t num_rois, int64_t channels, int64_t roi_height, int64_t roi_width, int64_t batch, int64_t frames,
    int32_t k, float* out)
{
    return cellwatch::troiMostSimilarRoiAlignHost(roi_feats, levels, batch_index, supports, support_heights,
        support_widths, num_levels, num_rois, channels, roi_height, roi_width, batch, frames, k, out);
}

extern "C" char const* cellwatch_troi_status_string(int32_t status)
{
    return cellwatch::troiStatusString(status);
}
