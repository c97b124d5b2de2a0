// TensorRT 10 IPluginV3 "TemporalRoIAlign" (namespace "cellwatch", version "1").
// See temporal_roi_align_plugin.h for the tensor contract; the work is done by
// cellwatch_troi_cuda (export/kernels/troi_cuda.cu).
//
// The library is loaded with IPluginRegistry::loadLibrary (Python:
// trt.get_plugin_registry().load_library(path), trtexec --dynamicPlugins),
// which calls the two extern "C" entry points at the end of this file.

#include "temporal_roi_align_plugin.h"

#include "troi_cuda.cuh"

#include <atomic>
#include <cstring>
#include <exception>
#include <new>

namespace cellwatch
{
namespace
{

using nvinfer1::DataType;
using nvinfer1::PluginFieldType;

constexpr int32_t kFixedInputs = 3; // roi_feats, levels, batch_index
constexpr char const* kNumLevelsField = "num_support_levels";

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

void logError(char const* message) noexcept
{
    nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
    nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, message);
    }
}

// An int field as the ONNX parser (int32) or a hand-built collection (int64) gives it.
bool readIntField(nvinfer1::PluginField const& field, int32_t& value) noexcept
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    switch (field.type)
    {
    case PluginFieldType::kINT32: value = *static_cast<int32_t const*>(field.data); return true;
    case PluginFieldType::kINT64: value = static_cast<int32_t>(*static_cast<int64_t const*>(field.data)); return true;
    default: return false;
    }
}

bool validLevelCount(int32_t numLevels) noexcept
{
    return numLevels >= 1 && numLevels <= kTroiMaxLevels;
}

} // namespace

TemporalRoIAlignPlugin::TemporalRoIAlignPlugin(int32_t numMostSimilar, int32_t numLevels)
    : mNumMostSimilar(numMostSimilar)
    , mNumLevels(numLevels)
{
}

nvinfer1::IPluginCapability* TemporalRoIAlignPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* TemporalRoIAlignPlugin::clone() noexcept
{
    try
    {
        return new TemporalRoIAlignPlugin(mNumMostSimilar, mNumLevels);
    }
    catch (std::exception const& err)
    {
        logError(err.what());
    }
    return nullptr;
}

char const* TemporalRoIAlignPlugin::getPluginName() const noexcept
{
    return kTemporalRoIAlignName;
}

char const* TemporalRoIAlignPlugin::getPluginVersion() const noexcept
{
    return kTemporalRoIAlignVersion;
}

char const* TemporalRoIAlignPlugin::getPluginNamespace() const noexcept
{
    return kTemporalRoIAlignNamespace;
}

int32_t TemporalRoIAlignPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (!validLevelCount(nbInputs - kFixedInputs) || nbOutputs != 1)
    {
        logError("TemporalRoIAlign: expects roi_feats, levels, batch_index and 1..8 support maps, one output");
        return 1;
    }
    bool ranks = in[0].desc.dims.nbDims == 4 && in[1].desc.dims.nbDims == 1 && in[2].desc.dims.nbDims == 1
        && out[0].desc.dims.nbDims == 5;
    for (int32_t i = kFixedInputs; i < nbInputs; ++i)
    {
        ranks = ranks && in[i].desc.dims.nbDims == 5;
    }
    if (!ranks)
    {
        logError("TemporalRoIAlign: roi_feats must be 4-D, levels and batch_index 1-D, support maps 5-D");
        return 1;
    }
    mNumLevels = nbInputs - kFixedInputs;
    return 0;
}

int32_t TemporalRoIAlignPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/, int32_t /*nbInputs*/) const noexcept
{
    if (nbOutputs != 1)
    {
        return 1;
    }
    // Always float32: supportsFormatCombination only accepts float32 features,
    // so TensorRT casts whatever precision the network runs in around the plugin.
    outputTypes[0] = DataType::kFLOAT;
    return 0;
}

int32_t TemporalRoIAlignPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (!validLevelCount(nbInputs - kFixedInputs) || nbOutputs != 1 || inputs[0].nbDims != 4
        || inputs[kFixedInputs].nbDims != 5)
    {
        return 1;
    }
    // [T, R, C, h, w]: T from the first support map, the rest from roi_feats.
    outputs[0].nbDims = 5;
    outputs[0].d[0] = inputs[kFixedInputs].d[1];
    for (int32_t i = 0; i < 4; ++i)
    {
        outputs[0].d[i + 1] = inputs[0].d[i];
    }
    return 0;
}

bool TemporalRoIAlignPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (pos < 0 || pos >= nbInputs + nbOutputs || inOut[pos].desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    bool const isIndex = pos == 1 || pos == 2; // levels, batch_index
    return inOut[pos].desc.type == (isIndex ? DataType::kINT64 : DataType::kFLOAT);
}

int32_t TemporalRoIAlignPlugin::getNbOutputs() const noexcept
{
    return 1;
}

size_t TemporalRoIAlignPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* /*inputs*/,
    int32_t /*nbInputs*/, nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0; // the kernel keeps its top-k in registers and allocates nothing
}

int32_t TemporalRoIAlignPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (!validLevelCount(nbInputs - kFixedInputs) || nbOutputs != 1 || in[0].dims.nbDims != 4
        || out[0].dims.nbDims != 5)
    {
        return 1;
    }
    mNumLevels = nbInputs - kFixedInputs;
    return 0;
}

int32_t TemporalRoIAlignPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs,
    void* /*workspace*/, cudaStream_t stream) noexcept
{
    if (!validLevelCount(mNumLevels))
    {
        logError("TemporalRoIAlign: enqueue before the number of support levels is known");
        return 1;
    }
    nvinfer1::Dims const& roi = inputDesc[0].dims;
    nvinfer1::Dims const& first = inputDesc[kFixedInputs].dims;
    float const* supports[kTroiMaxLevels] = {};
    int64_t heights[kTroiMaxLevels] = {};
    int64_t widths[kTroiMaxLevels] = {};
    for (int32_t l = 0; l < mNumLevels; ++l)
    {
        nvinfer1::Dims const& dims = inputDesc[kFixedInputs + l].dims;
        if (dims.d[0] != first.d[0] || dims.d[1] != first.d[1] || dims.d[2] != roi.d[1])
        {
            logError("TemporalRoIAlign: every support map must be [B, T, C, H_l, W_l] with one B, T and C");
            return 1;
        }
        supports[l] = static_cast<float const*>(inputs[kFixedInputs + l]);
        heights[l] = dims.d[3];
        widths[l] = dims.d[4];
    }
    int32_t const status = cellwatch_troi_cuda(static_cast<float const*>(inputs[0]),
        static_cast<int64_t const*>(inputs[1]), static_cast<int64_t const*>(inputs[2]), supports, heights, widths,
        mNumLevels, roi.d[0], roi.d[1], roi.d[2], roi.d[3], first.d[0], first.d[1], mNumMostSimilar,
        static_cast<float*>(outputs[0]), stream);
    if (status != kTroiOk)
    {
        logError(troiStatusString(status));
    }
    return status;
}

nvinfer1::IPluginV3* TemporalRoIAlignPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // no per-context resources
}

nvinfer1::PluginFieldCollection const* TemporalRoIAlignPlugin::getFieldsToSerialize() noexcept
{
    mSerialFields.clear();
    mSerialFields.emplace_back(kNumMostSimilarField, &mNumMostSimilar, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back(kNumLevelsField, &mNumLevels, PluginFieldType::kINT32, 1);
    mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerialCollection.fields = mSerialFields.data();
    return &mSerialCollection;
}

TemporalRoIAlignPluginCreator::TemporalRoIAlignPluginCreator()
{
    // What the ONNX parser collects from the node's attributes; plugin_version
    // and plugin_namespace select this creator and are not fields.
    mFieldNames.emplace_back(kNumMostSimilarField, nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* TemporalRoIAlignPluginCreator::getPluginName() const noexcept
{
    return kTemporalRoIAlignName;
}

char const* TemporalRoIAlignPluginCreator::getPluginVersion() const noexcept
{
    return kTemporalRoIAlignVersion;
}

char const* TemporalRoIAlignPluginCreator::getPluginNamespace() const noexcept
{
    return kTemporalRoIAlignNamespace;
}

nvinfer1::PluginFieldCollection const* TemporalRoIAlignPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

nvinfer1::IPluginV3* TemporalRoIAlignPluginCreator::createPlugin(
    char const* /*name*/, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    int32_t numMostSimilar = -1;
    int32_t numLevels = 0; // known from configurePlugin/onShapeChange when absent
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        nvinfer1::PluginField const& field = fc->fields[i];
        if (field.name == nullptr)
        {
            continue;
        }
        bool ok = true;
        if (std::strcmp(field.name, kNumMostSimilarField) == 0)
        {
            ok = readIntField(field, numMostSimilar);
        }
        else if (std::strcmp(field.name, kNumLevelsField) == 0)
        {
            ok = readIntField(field, numLevels);
        }
        if (!ok)
        {
            logError("TemporalRoIAlign: num_most_similar and num_support_levels must be int32 or int64 fields");
            return nullptr;
        }
    }
    if (numMostSimilar < 1 || numMostSimilar > kTroiMaxK)
    {
        logError("TemporalRoIAlign: num_most_similar must be given and lie in 1..4");
        return nullptr;
    }
    try
    {
        return new TemporalRoIAlignPlugin(numMostSimilar, numLevels);
    }
    catch (std::exception const& err)
    {
        logError(err.what());
    }
    return nullptr;
}

} // namespace cellwatch

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    cellwatch::gLoggerFinder.store(finder);
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators)
{
    static cellwatch::TemporalRoIAlignPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
