// Most-Similar RoI Align, the core of Temporal RoI Align, as plain C++ that
// nvcc compiles for the GPU (troi_cuda.cu) and g++ for the CPU (troi_cpu.cpp).
//
// This header owns the per-output computation and the argument checks that
// both builds share, so the CPU library the tests run is the same code the
// CUDA kernel runs. Contract (the ONNX "TemporalRoIAlign" node, plugin mode):
//
//   roi_feats   float32 [R, C, h, w]   current-frame pooled RoI features
//   levels      int64   [R]            support level each RoI searches, 0..L-1
//   batch_index int64   [R]            image of the batch each RoI belongs to
//   support_l   float32 [B, T, C, H_l, W_l] for l in 0..L-1 (P_l = H_l * W_l)
//   k           num_most_similar, 1..kTroiMaxK
//   out         float32 [T, R, C, h, w]
//
// For RoI r, cell (i, j) and frame t: q = roi_feats[r, :, i, j] / max(|.|, eps);
// with S = support_{levels[r]}[batch_index[r], t] as P columns of C channels,
// sim_p = q . S_p / max(|S_p|, eps); the k' = min(k, P) largest sims (ties: the
// lowest position wins) are softmax-weighted and the RAW S_p summed. P == 0
// gives zeros. Norms are computed on the fly and the top-k is a running list
// in registers, so no similarity row is ever stored.

#ifndef CELLWATCH_TROI_CUDA_CUH
#define CELLWATCH_TROI_CUDA_CUH

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define CW_TROI_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CW_TROI_HOST_DEVICE inline
#endif

// Unrolling the fixed kTroiMaxK loops is what keeps the top-k in registers
// (constant indices); host compilers unroll such short loops on their own.
#if defined(__CUDA_ARCH__)
#define CW_TROI_UNROLL _Pragma("unroll")
#else
#define CW_TROI_UNROLL
#endif

namespace cellwatch
{

constexpr int32_t kTroiMaxK = 4;       // the running top-k is unrolled; keep it small
constexpr int32_t kTroiMaxLevels = 8;  // support levels passed by value to the kernel
constexpr float kTroiNormEps = 1e-12f; // same guard as models.temporal_roi_align

enum TroiStatus : int32_t
{
    kTroiOk = 0,
    kTroiBadK = 1,
    kTroiBadNumLevels = 2,
    kTroiBadShape = 3,
    kTroiBadLevelIndex = 4,
    kTroiBadBatchIndex = 5,
    kTroiNullPointer = 6,
    kTroiCudaError = 7,
};

inline char const* troiStatusString(int32_t status)
{
    switch (status)
    {
    case kTroiOk: return "ok";
    case kTroiBadK: return "num_most_similar (k) must be in 1..4";
    case kTroiBadNumLevels: return "the number of support levels must be in 1..8";
    case kTroiBadShape: return "shapes must be non-negative and channels >= 1";
    case kTroiBadLevelIndex: return "a RoI's level index is outside [0, number of support levels)";
    case kTroiBadBatchIndex: return "a RoI's batch index is outside [0, support batch size)";
    case kTroiNullPointer: return "a non-empty tensor was given a null pointer";
    case kTroiCudaError: return "the CUDA kernel launch failed";
    default: return "unknown status";
    }
}

// Everything one output element needs; passed by value to the kernel.
struct TroiParams
{
    float const* roiFeats;
    int64_t const* levels;
    int64_t const* batchIndex;
    float const* supports[kTroiMaxLevels];
    int64_t positions[kTroiMaxLevels]; // H_l * W_l
    float* out;
    int64_t numRois;
    int64_t channels;
    int64_t cellsPerRoi; // h * w
    int64_t batch;
    int64_t frames;
    int32_t numLevels;
    int32_t k;
};

// One query cell against one support frame.
//   query:   C values, `queryStride` apart (a cell of a [C, h, w] RoI)
//   support: a [C, P] frame, channel-major (a frame of a [B, T, C, H, W] map)
//   out:     C values, `outStride` apart
CW_TROI_HOST_DEVICE void troiMostSimilarCell(float const* query, int64_t queryStride, float const* support,
    int64_t positions, int64_t channels, int32_t k, float* out, int64_t outStride)
{
    int32_t const kept = positions < k ? static_cast<int32_t>(positions) : k;
    if (kept <= 0)
    {
        for (int64_t c = 0; c < channels; ++c)
        {
            out[c * outStride] = 0.0f;
        }
        return;
    }

    float queryNormSq = 0.0f;
    for (int64_t c = 0; c < channels; ++c)
    {
        float const v = query[c * queryStride];
        queryNormSq += v * v;
    }
    float const queryScale = 1.0f / fmaxf(sqrtf(queryNormSq), kTroiNormEps);

    // Sorted descending; slots >= kept stay unused. Every index below is a
    // compile-time constant after unrolling, so the list lives in registers.
    float topSim[kTroiMaxK];
    int64_t topPos[kTroiMaxK];
CW_TROI_UNROLL
    for (int32_t s = 0; s < kTroiMaxK; ++s)
    {
        topSim[s] = -INFINITY;
        topPos[s] = 0;
    }

    for (int64_t p = 0; p < positions; ++p)
    {
        float dot = 0.0f;
        float normSq = 0.0f;
        for (int64_t c = 0; c < channels; ++c)
        {
            float const s = support[c * positions + p];
            dot += query[c * queryStride] * s;
            normSq += s * s;
        }
        float sim = dot * queryScale / fmaxf(sqrtf(normSq), kTroiNormEps);
        int64_t pos = p;
        // Insertion by carrying the candidate down the list. A candidate only
        // enters above a strictly smaller one, and once in, every entry below
        // shifts down by one, so among equal sims the earlier positions stay.
        bool placed = false;
CW_TROI_UNROLL
        for (int32_t s = 0; s < kTroiMaxK; ++s)
        {
            if (s < kept && (placed || sim > topSim[s]))
            {
                float const carrySim = topSim[s];
                int64_t const carryPos = topPos[s];
                topSim[s] = sim;
                topPos[s] = pos;
                sim = carrySim;
                pos = carryPos;
                placed = true;
            }
        }
    }

    // Softmax over the kept sims; slot 0 holds the largest.
    float weight[kTroiMaxK];
    float total = 0.0f;
CW_TROI_UNROLL
    for (int32_t s = 0; s < kTroiMaxK; ++s)
    {
        weight[s] = s < kept ? expf(topSim[s] - topSim[0]) : 0.0f;
        total += weight[s];
    }
CW_TROI_UNROLL
    for (int32_t s = 0; s < kTroiMaxK; ++s)
    {
        weight[s] /= total;
    }

    for (int64_t c = 0; c < channels; ++c)
    {
        float const* row = support + c * positions;
        float acc = 0.0f;
CW_TROI_UNROLL
        for (int32_t s = 0; s < kTroiMaxK; ++s)
        {
            if (s < kept)
            {
                acc += weight[s] * row[topPos[s]];
            }
        }
        out[c * outStride] = acc;
    }
}

// out[t, r, :, cell]. An out-of-range level or batch index (which only the GPU
// path can meet: the host path checks them first) yields NaN, never a silent
// read of another image's memory.
CW_TROI_HOST_DEVICE void troiOutputCell(TroiParams const& p, int64_t frame, int64_t roi, int64_t cell)
{
    int64_t const roiStride = p.channels * p.cellsPerRoi;
    float* out = p.out + (frame * p.numRois + roi) * roiStride + cell;
    int64_t const level = p.levels[roi];
    int64_t const image = p.batchIndex[roi];
    if (level < 0 || level >= p.numLevels || image < 0 || image >= p.batch)
    {
        for (int64_t c = 0; c < p.channels; ++c)
        {
            out[c * p.cellsPerRoi] = NAN;
        }
        return;
    }
    int64_t const positions = p.positions[level];
    float const* support = p.supports[level] + (image * p.frames + frame) * p.channels * positions;
    float const* query = p.roiFeats + roi * roiStride + cell;
    troiMostSimilarCell(query, p.cellsPerRoi, support, positions, p.channels, p.k, out, p.cellsPerRoi);
}

// Checks what the caller can check without reading device memory, and fills
// `params`. Shared by the CPU entry point and the CUDA launcher.
inline int32_t troiMakeParams(float const* roiFeats, int64_t const* levels, int64_t const* batchIndex,
    float const* const* supports, int64_t const* supportHeights, int64_t const* supportWidths, int32_t numLevels,
    int64_t numRois, int64_t channels, int64_t roiHeight, int64_t roiWidth, int64_t batch, int64_t frames,
    int32_t k, float* out, TroiParams* params)
{
    if (k < 1 || k > kTroiMaxK)
    {
        return kTroiBadK;
    }
    if (numLevels < 1 || numLevels > kTroiMaxLevels)
    {
        return kTroiBadNumLevels;
    }
    if (params == nullptr || supports == nullptr || supportHeights == nullptr || supportWidths == nullptr)
    {
        return kTroiNullPointer;
    }
    if (numRois < 0 || channels < 1 || roiHeight < 0 || roiWidth < 0 || batch < 0 || frames < 0)
    {
        return kTroiBadShape;
    }
    bool const anyOutput = numRois > 0 && frames > 0 && roiHeight > 0 && roiWidth > 0;
    if (numRois > 0 && (roiFeats == nullptr || levels == nullptr || batchIndex == nullptr))
    {
        return kTroiNullPointer;
    }
    if (anyOutput && out == nullptr)
    {
        return kTroiNullPointer;
    }
    params->roiFeats = roiFeats;
    params->levels = levels;
    params->batchIndex = batchIndex;
    params->out = out;
    params->numRois = numRois;
    params->channels = channels;
    params->cellsPerRoi = roiHeight * roiWidth;
    params->batch = batch;
    params->frames = frames;
    params->numLevels = numLevels;
    params->k = k;
    for (int32_t l = 0; l < kTroiMaxLevels; ++l)
    {
        params->supports[l] = nullptr;
        params->positions[l] = 0;
    }
    for (int32_t l = 0; l < numLevels; ++l)
    {
        if (supportHeights[l] < 0 || supportWidths[l] < 0)
        {
            return kTroiBadShape;
        }
        params->positions[l] = supportHeights[l] * supportWidths[l];
        if (anyOutput && batch > 0 && params->positions[l] > 0 && supports[l] == nullptr)
        {
            return kTroiNullPointer;
        }
        params->supports[l] = supports[l];
    }
    return kTroiOk;
}

// Host-only: index checks that need `levels` and `batchIndex` in host memory.
inline int32_t troiCheckIndices(TroiParams const& p)
{
    for (int64_t r = 0; r < p.numRois; ++r)
    {
        if (p.levels[r] < 0 || p.levels[r] >= p.numLevels)
        {
            return kTroiBadLevelIndex;
        }
        if (p.batchIndex[r] < 0 || p.batchIndex[r] >= p.batch)
        {
            return kTroiBadBatchIndex;
        }
    }
    return kTroiOk;
}

// The whole op on the host: a plain loop over (t, r, cell). All pointers are
// host memory.
inline int32_t troiMostSimilarRoiAlignHost(float const* roiFeats, int64_t const* levels, int64_t const* batchIndex,
    float const* const* supports, int64_t const* supportHeights, int64_t const* supportWidths, int32_t numLevels,
    int64_t numRois, int64_t channels, int64_t roiHeight, int64_t roiWidth, int64_t batch, int64_t frames,
    int32_t k, float* out)
{
    TroiParams params;
    int32_t status = troiMakeParams(roiFeats, levels, batchIndex, supports, supportHeights, supportWidths,
        numLevels, numRois, channels, roiHeight, roiWidth, batch, frames, k, out, &params);
    if (status != kTroiOk)
    {
        return status;
    }
    status = troiCheckIndices(params);
    if (status != kTroiOk)
    {
        return status;
    }
    for (int64_t t = 0; t < frames; ++t)
    {
        for (int64_t r = 0; r < numRois; ++r)
        {
            for (int64_t cell = 0; cell < params.cellsPerRoi; ++cell)
            {
                troiOutputCell(params, t, r, cell);
            }
        }
    }
    return kTroiOk;
}

} // namespace cellwatch

// The CUDA launcher (troi_cuda.cu). `supports` is a HOST array of L DEVICE
// pointers; every other pointer is device memory. The stream is declared as
// CUDA's own `struct CUstream_st*` (what cudaStream_t names), so this header
// needs no CUDA include. Returns a TroiStatus.
struct CUstream_st;
extern "C" int32_t cellwatch_troi_cuda(float const* roi_feats, int64_t const* levels, int64_t const* batch_index,
    float const* const* supports, int64_t const* support_heights, int64_t const* support_widths, int32_t num_levels,
    int64_t num_rois, int64_t channels, int64_t roi_height, int64_t roi_width, int64_t batch, int64_t frames,
    int32_t k, float* out, CUstream_st* stream);

#endif // CELLWATCH_TROI_CUDA_CUH
