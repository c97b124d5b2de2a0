// TensorRT 10 plugin (IPluginV3) for the ONNX node "TemporalRoIAlign" that
// export.onnx writes in plugin mode: Most-Similar RoI Align, the core of
// Temporal RoI Align. The computation is export/kernels/troi_cuda.cu.
//
//   inputs:  roi_feats float32 [R, C, h, w], levels int64 [R],
//            batch_index int64 [R], support_0 .. support_{L-1} float32
//            [B, T, C, H_l, W_l] (1 <= L <= 8, T may be 0)
//   output:  float32 [T, R, C, h, w]
//   field:   num_most_similar (int, 1..4)
//
// Float32 only: in an --fp16 engine TensorRT inserts the casts around it.

#ifndef CELLWATCH_TEMPORAL_ROI_ALIGN_PLUGIN_H
#define CELLWATCH_TEMPORAL_ROI_ALIGN_PLUGIN_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cellwatch
{

constexpr char const* kTemporalRoIAlignName = "TemporalRoIAlign";
constexpr char const* kTemporalRoIAlignVersion = "1";
constexpr char const* kTemporalRoIAlignNamespace = "cellwatch";
constexpr char const* kNumMostSimilarField = "num_most_similar";

class TemporalRoIAlignPlugin : public nvinfer1::IPluginV3,
                               public nvinfer1::IPluginV3OneCore,
                               public nvinfer1::IPluginV3OneBuild,
                               public nvinfer1::IPluginV3OneRuntime
{
public:
    // numLevels: 0 until configurePlugin/onShapeChange see the inputs (it is
    // serialized, so a deserialized plugin knows it from the start).
    TemporalRoIAlignPlugin(int32_t numMostSimilar, int32_t numLevels);
    ~TemporalRoIAlignPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t mNumMostSimilar;
    int32_t mNumLevels;
    // Backing store of getFieldsToSerialize(); rebuilt on each call.
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

class TemporalRoIAlignPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    TemporalRoIAlignPluginCreator();
    ~TemporalRoIAlignPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace cellwatch

#endif // CELLWATCH_TEMPORAL_ROI_ALIGN_PLUGIN_H
