from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_GUIDED_BACKPROP: _ClassVar[Method]
    GUIDED_BACKPROP: _ClassVar[Method]
    METHOD_ACTIVATIONS: _ClassVar[Method]
    ACTIVATIONS: _ClassVar[Method]
    METHOD_GRAD_CAM: _ClassVar[Method]
    GRAD_CAM: _ClassVar[Method]
    METHOD_GUIDED_GRAD_CAM: _ClassVar[Method]
    GUIDED_GRAD_CAM: _ClassVar[Method]
    METHOD_DECONVOLUTION: _ClassVar[Method]
    DECONVOLUTION: _ClassVar[Method]
    METHOD_SALIENCY: _ClassVar[Method]
    SALIENCY: _ClassVar[Method]
    METHOD_INTEGRATED_GRADIENTS: _ClassVar[Method]
    INTEGRATED_GRADIENTS: _ClassVar[Method]
    METHOD_LRP: _ClassVar[Method]
    LRP: _ClassVar[Method]
    METHOD_INPUT_X_GRADIENT: _ClassVar[Method]
    INPUT_X_GRADIENT: _ClassVar[Method]
    METHOD_ATTENTION_ROLLOUT: _ClassVar[Method]
    ATTENTION_ROLLOUT: _ClassVar[Method]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]

class MapSign(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MAP_SIGN_UNSPECIFIED: _ClassVar[MapSign]
    MAP_SIGN_SIGNED: _ClassVar[MapSign]
    MAP_SIGN_UNSIGNED: _ClassVar[MapSign]

class Overlay(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERLAY_UNSPECIFIED: _ClassVar[Overlay]
    OVERLAY_INPUT: _ClassVar[Overlay]
    OVERLAY_NONE: _ClassVar[Overlay]

class LrpComposite(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LRP_COMPOSITE_UNSPECIFIED: _ClassVar[LrpComposite]
    LRP_COMPOSITE_EPSILON_PLUS_FLAT: _ClassVar[LrpComposite]
    LRP_COMPOSITE_EPSILON_PLUS: _ClassVar[LrpComposite]
    LRP_COMPOSITE_EPSILON_GAMMA_BOX: _ClassVar[LrpComposite]
    LRP_COMPOSITE_EPSILON_ALPHA2_BETA1: _ClassVar[LrpComposite]
    LRP_COMPOSITE_EPSILON_ALPHA2_BETA1_FLAT: _ClassVar[LrpComposite]
    LRP_COMPOSITE_DEEP_TAYLOR: _ClassVar[LrpComposite]
    LRP_COMPOSITE_EPSILON: _ClassVar[LrpComposite]

class SmoothKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SMOOTH_KIND_UNSPECIFIED: _ClassVar[SmoothKind]
    SMOOTH_KIND_SMOOTHGRAD: _ClassVar[SmoothKind]
    SMOOTH_KIND_SMOOTHGRAD_SQ: _ClassVar[SmoothKind]
    SMOOTH_KIND_VARGRAD: _ClassVar[SmoothKind]

class IntegrationMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTEGRATION_METHOD_UNSPECIFIED: _ClassVar[IntegrationMethod]
    INTEGRATION_METHOD_GAUSS_LEGENDRE: _ClassVar[IntegrationMethod]
    INTEGRATION_METHOD_RIEMANN_LEFT: _ClassVar[IntegrationMethod]
    INTEGRATION_METHOD_RIEMANN_RIGHT: _ClassVar[IntegrationMethod]
    INTEGRATION_METHOD_RIEMANN_MIDDLE: _ClassVar[IntegrationMethod]
    INTEGRATION_METHOD_RIEMANN_TRAPEZOID: _ClassVar[IntegrationMethod]
    INTEGRATION_METHOD_EXPECTED_GRADIENTS: _ClassVar[IntegrationMethod]

class BaselineKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BASELINE_KIND_UNSPECIFIED: _ClassVar[BaselineKind]
    BASELINE_KIND_ZERO: _ClassVar[BaselineKind]
    BASELINE_KIND_BLACK: _ClassVar[BaselineKind]
    BASELINE_KIND_BLUR: _ClassVar[BaselineKind]
    BASELINE_KIND_UNIFORM: _ClassVar[BaselineKind]
    BASELINE_KIND_IMAGES: _ClassVar[BaselineKind]

class HeadFusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEAD_FUSION_UNSPECIFIED: _ClassVar[HeadFusion]
    HEAD_FUSION_MEAN: _ClassVar[HeadFusion]
    HEAD_FUSION_MAX: _ClassVar[HeadFusion]
    HEAD_FUSION_MIN: _ClassVar[HeadFusion]

class Layout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LAYOUT_UNSPECIFIED: _ClassVar[Layout]
    LAYOUT_CHANNELS_FIRST: _ClassVar[Layout]
    LAYOUT_CHANNELS_LAST: _ClassVar[Layout]
    LAYOUT_TOKENS: _ClassVar[Layout]
    LAYOUT_VECTOR: _ClassVar[Layout]
    LAYOUT_OTHER: _ClassVar[Layout]

class Parameterization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARAMETERIZATION_UNSPECIFIED: _ClassVar[Parameterization]
    PARAMETERIZATION_FFT: _ClassVar[Parameterization]
    PARAMETERIZATION_PIXEL: _ClassVar[Parameterization]

class Preset(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESET_UNSPECIFIED: _ClassVar[Preset]
    PRESET_LUCID: _ClassVar[Preset]
    PRESET_CLASS_MODEL: _ClassVar[Preset]

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_RANDOMIZATION: _ClassVar[Metric]
    METRIC_DELETION: _ClassVar[Metric]
    METRIC_INSERTION: _ClassVar[Metric]
    METRIC_INFIDELITY: _ClassVar[Metric]
    METRIC_SENSITIVITY: _ClassVar[Metric]

class RandomizationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANDOMIZATION_MODE_UNSPECIFIED: _ClassVar[RandomizationMode]
    RANDOMIZATION_MODE_CASCADING: _ClassVar[RandomizationMode]
    RANDOMIZATION_MODE_INDEPENDENT: _ClassVar[RandomizationMode]
    RANDOMIZATION_MODE_BOTH: _ClassVar[RandomizationMode]
METHOD_UNSPECIFIED: Method
METHOD_GUIDED_BACKPROP: Method
GUIDED_BACKPROP: Method
METHOD_ACTIVATIONS: Method
ACTIVATIONS: Method
METHOD_GRAD_CAM: Method
GRAD_CAM: Method
METHOD_GUIDED_GRAD_CAM: Method
GUIDED_GRAD_CAM: Method
METHOD_DECONVOLUTION: Method
DECONVOLUTION: Method
METHOD_SALIENCY: Method
SALIENCY: Method
METHOD_INTEGRATED_GRADIENTS: Method
INTEGRATED_GRADIENTS: Method
METHOD_LRP: Method
LRP: Method
METHOD_INPUT_X_GRADIENT: Method
INPUT_X_GRADIENT: Method
METHOD_ATTENTION_ROLLOUT: Method
ATTENTION_ROLLOUT: Method
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_UINT8: DType
DTYPE_INT64: DType
MAP_SIGN_UNSPECIFIED: MapSign
MAP_SIGN_SIGNED: MapSign
MAP_SIGN_UNSIGNED: MapSign
OVERLAY_UNSPECIFIED: Overlay
OVERLAY_INPUT: Overlay
OVERLAY_NONE: Overlay
LRP_COMPOSITE_UNSPECIFIED: LrpComposite
LRP_COMPOSITE_EPSILON_PLUS_FLAT: LrpComposite
LRP_COMPOSITE_EPSILON_PLUS: LrpComposite
LRP_COMPOSITE_EPSILON_GAMMA_BOX: LrpComposite
LRP_COMPOSITE_EPSILON_ALPHA2_BETA1: LrpComposite
LRP_COMPOSITE_EPSILON_ALPHA2_BETA1_FLAT: LrpComposite
LRP_COMPOSITE_DEEP_TAYLOR: LrpComposite
LRP_COMPOSITE_EPSILON: LrpComposite
SMOOTH_KIND_UNSPECIFIED: SmoothKind
SMOOTH_KIND_SMOOTHGRAD: SmoothKind
SMOOTH_KIND_SMOOTHGRAD_SQ: SmoothKind
SMOOTH_KIND_VARGRAD: SmoothKind
INTEGRATION_METHOD_UNSPECIFIED: IntegrationMethod
INTEGRATION_METHOD_GAUSS_LEGENDRE: IntegrationMethod
INTEGRATION_METHOD_RIEMANN_LEFT: IntegrationMethod
INTEGRATION_METHOD_RIEMANN_RIGHT: IntegrationMethod
INTEGRATION_METHOD_RIEMANN_MIDDLE: IntegrationMethod
INTEGRATION_METHOD_RIEMANN_TRAPEZOID: IntegrationMethod
INTEGRATION_METHOD_EXPECTED_GRADIENTS: IntegrationMethod
BASELINE_KIND_UNSPECIFIED: BaselineKind
BASELINE_KIND_ZERO: BaselineKind
BASELINE_KIND_BLACK: BaselineKind
BASELINE_KIND_BLUR: BaselineKind
BASELINE_KIND_UNIFORM: BaselineKind
BASELINE_KIND_IMAGES: BaselineKind
HEAD_FUSION_UNSPECIFIED: HeadFusion
HEAD_FUSION_MEAN: HeadFusion
HEAD_FUSION_MAX: HeadFusion
HEAD_FUSION_MIN: HeadFusion
LAYOUT_UNSPECIFIED: Layout
LAYOUT_CHANNELS_FIRST: Layout
LAYOUT_CHANNELS_LAST: Layout
LAYOUT_TOKENS: Layout
LAYOUT_VECTOR: Layout
LAYOUT_OTHER: Layout
PARAMETERIZATION_UNSPECIFIED: Parameterization
PARAMETERIZATION_FFT: Parameterization
PARAMETERIZATION_PIXEL: Parameterization
PRESET_UNSPECIFIED: Preset
PRESET_LUCID: Preset
PRESET_CLASS_MODEL: Preset
METRIC_UNSPECIFIED: Metric
METRIC_RANDOMIZATION: Metric
METRIC_DELETION: Metric
METRIC_INSERTION: Metric
METRIC_INFIDELITY: Metric
METRIC_SENSITIVITY: Metric
RANDOMIZATION_MODE_UNSPECIFIED: RandomizationMode
RANDOMIZATION_MODE_CASCADING: RandomizationMode
RANDOMIZATION_MODE_INDEPENDENT: RandomizationMode
RANDOMIZATION_MODE_BOTH: RandomizationMode

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("image", "pixels", "tensor")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    pixels: Tensor
    tensor: Tensor
    def __init__(self, image: _Optional[bytes] = ..., pixels: _Optional[_Union[Tensor, _Mapping]] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Neuron(_message.Message):
    __slots__ = ("layer", "channel", "y", "x")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    layer: str
    channel: int
    y: int
    x: int
    def __init__(self, layer: _Optional[str] = ..., channel: _Optional[int] = ..., y: _Optional[int] = ..., x: _Optional[int] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("class_index", "neuron")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    NEURON_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    neuron: Neuron
    def __init__(self, class_index: _Optional[int] = ..., neuron: _Optional[_Union[Neuron, _Mapping]] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("array_dtype", "omit_array", "render", "top_k", "picture_width", "picture_height", "colormap", "clip_percentile", "sign", "colorbar", "caption", "overlay")
    ARRAY_DTYPE_FIELD_NUMBER: _ClassVar[int]
    OMIT_ARRAY_FIELD_NUMBER: _ClassVar[int]
    RENDER_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PICTURE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    PICTURE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    COLORMAP_FIELD_NUMBER: _ClassVar[int]
    CLIP_PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    SIGN_FIELD_NUMBER: _ClassVar[int]
    COLORBAR_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    array_dtype: DType
    omit_array: bool
    render: bool
    top_k: int
    picture_width: int
    picture_height: int
    colormap: str
    clip_percentile: float
    sign: MapSign
    colorbar: bool
    caption: bool
    overlay: Overlay
    def __init__(self, array_dtype: _Optional[_Union[DType, str]] = ..., omit_array: bool = ..., render: bool = ..., top_k: _Optional[int] = ..., picture_width: _Optional[int] = ..., picture_height: _Optional[int] = ..., colormap: _Optional[str] = ..., clip_percentile: _Optional[float] = ..., sign: _Optional[_Union[MapSign, str]] = ..., colorbar: bool = ..., caption: bool = ..., overlay: _Optional[_Union[Overlay, str]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "method", "input", "target", "layers", "output", "top_k_channels", "lrp", "smooth", "integrated_gradients", "rollout")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LRP_FIELD_NUMBER: _ClassVar[int]
    SMOOTH_FIELD_NUMBER: _ClassVar[int]
    INTEGRATED_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    model: str
    method: Method
    input: Input
    target: Target
    layers: _containers.RepeatedScalarFieldContainer[str]
    output: OutputOptions
    top_k_channels: int
    lrp: LrpOptions
    smooth: SmoothGradOptions
    integrated_gradients: IntegratedGradientsOptions
    rollout: RolloutOptions
    def __init__(self, model: _Optional[str] = ..., method: _Optional[_Union[Method, str]] = ..., input: _Optional[_Union[Input, _Mapping]] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., layers: _Optional[_Iterable[str]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., top_k_channels: _Optional[int] = ..., lrp: _Optional[_Union[LrpOptions, _Mapping]] = ..., smooth: _Optional[_Union[SmoothGradOptions, _Mapping]] = ..., integrated_gradients: _Optional[_Union[IntegratedGradientsOptions, _Mapping]] = ..., rollout: _Optional[_Union[RolloutOptions, _Mapping]] = ...) -> None: ...

class LrpOptions(_message.Message):
    __slots__ = ("composite", "epsilon", "gamma")
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    composite: LrpComposite
    epsilon: float
    gamma: float
    def __init__(self, composite: _Optional[_Union[LrpComposite, str]] = ..., epsilon: _Optional[float] = ..., gamma: _Optional[float] = ...) -> None: ...

class SmoothGradOptions(_message.Message):
    __slots__ = ("samples", "noise", "kind", "seed")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    samples: int
    noise: float
    kind: SmoothKind
    seed: int
    def __init__(self, samples: _Optional[int] = ..., noise: _Optional[float] = ..., kind: _Optional[_Union[SmoothKind, str]] = ..., seed: _Optional[int] = ...) -> None: ...

class IntegratedGradientsOptions(_message.Message):
    __slots__ = ("steps", "method", "baseline", "blur_sigma", "baseline_samples", "baseline_images", "seed")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    BLUR_SIGMA_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    steps: int
    method: IntegrationMethod
    baseline: BaselineKind
    blur_sigma: float
    baseline_samples: int
    baseline_images: _containers.RepeatedCompositeFieldContainer[Input]
    seed: int
    def __init__(self, steps: _Optional[int] = ..., method: _Optional[_Union[IntegrationMethod, str]] = ..., baseline: _Optional[_Union[BaselineKind, str]] = ..., blur_sigma: _Optional[float] = ..., baseline_samples: _Optional[int] = ..., baseline_images: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., seed: _Optional[int] = ...) -> None: ...

class RolloutOptions(_message.Message):
    __slots__ = ("head_fusion", "discard_ratio")
    HEAD_FUSION_FIELD_NUMBER: _ClassVar[int]
    DISCARD_RATIO_FIELD_NUMBER: _ClassVar[int]
    head_fusion: HeadFusion
    discard_ratio: float
    def __init__(self, head_fusion: _Optional[_Union[HeadFusion, str]] = ..., discard_ratio: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("index", "label", "score")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    score: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "compute_ms", "batch_size", "cached")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    compute_ms: float
    batch_size: int
    cached: bool
    def __init__(self, queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., batch_size: _Optional[int] = ..., cached: bool = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "method", "array", "image_png", "predictions", "target", "timing", "warnings", "arrays", "images", "input_region", "layer", "completeness")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PNG_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    INPUT_REGION_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_FIELD_NUMBER: _ClassVar[int]
    model: str
    method: Method
    array: Tensor
    image_png: bytes
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    target: Target
    timing: Timing
    warnings: _containers.RepeatedScalarFieldContainer[str]
    arrays: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    images: _containers.RepeatedCompositeFieldContainer[NamedImage]
    input_region: InputRegion
    layer: str
    completeness: Completeness
    def __init__(self, model: _Optional[str] = ..., method: _Optional[_Union[Method, str]] = ..., array: _Optional[_Union[Tensor, _Mapping]] = ..., image_png: _Optional[bytes] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., arrays: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., images: _Optional[_Iterable[_Union[NamedImage, _Mapping]]] = ..., input_region: _Optional[_Union[InputRegion, _Mapping]] = ..., layer: _Optional[str] = ..., completeness: _Optional[_Union[Completeness, _Mapping]] = ...) -> None: ...

class Completeness(_message.Message):
    __slots__ = ("attribution_sum", "score", "baseline_score", "delta")
    ATTRIBUTION_SUM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SCORE_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    attribution_sum: float
    score: float
    baseline_score: float
    delta: float
    def __init__(self, attribution_sum: _Optional[float] = ..., score: _Optional[float] = ..., baseline_score: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class InputRegion(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    width: float
    height: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., width: _Optional[float] = ..., height: _Optional[float] = ...) -> None: ...

class ExplainBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ExplainRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ExplainRequest, _Mapping]]] = ...) -> None: ...

class ExplainBatchResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ExplainBatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ExplainBatchItem, _Mapping]]] = ...) -> None: ...

class ExplainBatchItem(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: ExplainResponse
    error: ItemError
    def __init__(self, response: _Optional[_Union[ExplainResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message", "field")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class NamedImage(_message.Message):
    __slots__ = ("name", "png")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    name: str
    png: bytes
    def __init__(self, name: _Optional[str] = ..., png: _Optional[bytes] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "arch", "num_classes", "channels", "height", "width", "mean", "std", "labels", "methods", "resize")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    arch: str
    num_classes: int
    channels: int
    height: int
    width: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    labels: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[Method]
    resize: int
    def __init__(self, name: _Optional[str] = ..., arch: _Optional[str] = ..., num_classes: _Optional[int] = ..., channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., labels: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[_Union[Method, str]]] = ..., resize: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class LayerInfo(_message.Message):
    __slots__ = ("name", "type", "output_shape", "calls", "layout", "map_shape", "class_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    MAP_SHAPE_FIELD_NUMBER: _ClassVar[int]
    CLASS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    calls: int
    layout: Layout
    map_shape: _containers.RepeatedScalarFieldContainer[int]
    class_tokens: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., output_shape: _Optional[_Iterable[int]] = ..., calls: _Optional[int] = ..., layout: _Optional[_Union[Layout, str]] = ..., map_shape: _Optional[_Iterable[int]] = ..., class_tokens: _Optional[int] = ...) -> None: ...

class DescribeModelResponse(_message.Message):
    __slots__ = ("model", "layers", "default_cam_layer", "non_relu_activations", "default_cam_layer_note", "attention_layers")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CAM_LAYER_FIELD_NUMBER: _ClassVar[int]
    NON_RELU_ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CAM_LAYER_NOTE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    layers: _containers.RepeatedCompositeFieldContainer[LayerInfo]
    default_cam_layer: str
    non_relu_activations: _containers.RepeatedScalarFieldContainer[str]
    default_cam_layer_note: str
    attention_layers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[LayerInfo, _Mapping]]] = ..., default_cam_layer: _Optional[str] = ..., non_relu_activations: _Optional[_Iterable[str]] = ..., default_cam_layer_note: _Optional[str] = ..., attention_layers: _Optional[_Iterable[str]] = ...) -> None: ...

class Objective(_message.Message):
    __slots__ = ("neuron", "class_index", "layer", "negate")
    NEURON_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    NEGATE_FIELD_NUMBER: _ClassVar[int]
    neuron: Neuron
    class_index: int
    layer: str
    negate: bool
    def __init__(self, neuron: _Optional[_Union[Neuron, _Mapping]] = ..., class_index: _Optional[int] = ..., layer: _Optional[str] = ..., negate: bool = ...) -> None: ...

class VisualizeRequest(_message.Message):
    __slots__ = ("model", "objective", "steps", "learning_rate", "height", "width", "batch", "diversity", "seed", "progress_every", "parameterization", "no_transforms", "input", "array_dtype", "preset", "l2_penalty")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_EVERY_FIELD_NUMBER: _ClassVar[int]
    PARAMETERIZATION_FIELD_NUMBER: _ClassVar[int]
    NO_TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    ARRAY_DTYPE_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    L2_PENALTY_FIELD_NUMBER: _ClassVar[int]
    model: str
    objective: Objective
    steps: int
    learning_rate: float
    height: int
    width: int
    batch: int
    diversity: float
    seed: int
    progress_every: int
    parameterization: Parameterization
    no_transforms: bool
    input: Input
    array_dtype: DType
    preset: Preset
    l2_penalty: float
    def __init__(self, model: _Optional[str] = ..., objective: _Optional[_Union[Objective, _Mapping]] = ..., steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., batch: _Optional[int] = ..., diversity: _Optional[float] = ..., seed: _Optional[int] = ..., progress_every: _Optional[int] = ..., parameterization: _Optional[_Union[Parameterization, str]] = ..., no_transforms: bool = ..., input: _Optional[_Union[Input, _Mapping]] = ..., array_dtype: _Optional[_Union[DType, str]] = ..., preset: _Optional[_Union[Preset, str]] = ..., l2_penalty: _Optional[float] = ...) -> None: ...

class VisualizeProgress(_message.Message):
    __slots__ = ("step", "steps", "objective", "image_png")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PNG_FIELD_NUMBER: _ClassVar[int]
    step: int
    steps: int
    objective: float
    image_png: bytes
    def __init__(self, step: _Optional[int] = ..., steps: _Optional[int] = ..., objective: _Optional[float] = ..., image_png: _Optional[bytes] = ...) -> None: ...

class VisualizeResult(_message.Message):
    __slots__ = ("array", "images_png", "objective", "steps", "attribution", "attribution_png", "queue_ms", "compute_ms", "max_batch_jobs", "attribution_region")
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PNG_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_PNG_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_JOBS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_REGION_FIELD_NUMBER: _ClassVar[int]
    array: Tensor
    images_png: _containers.RepeatedScalarFieldContainer[bytes]
    objective: float
    steps: int
    attribution: Tensor
    attribution_png: bytes
    queue_ms: float
    compute_ms: float
    max_batch_jobs: int
    attribution_region: InputRegion
    def __init__(self, array: _Optional[_Union[Tensor, _Mapping]] = ..., images_png: _Optional[_Iterable[bytes]] = ..., objective: _Optional[float] = ..., steps: _Optional[int] = ..., attribution: _Optional[_Union[Tensor, _Mapping]] = ..., attribution_png: _Optional[bytes] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., max_batch_jobs: _Optional[int] = ..., attribution_region: _Optional[_Union[InputRegion, _Mapping]] = ...) -> None: ...

class VisualizeResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: VisualizeProgress
    result: VisualizeResult
    def __init__(self, progress: _Optional[_Union[VisualizeProgress, _Mapping]] = ..., result: _Optional[_Union[VisualizeResult, _Mapping]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model", "methods", "inputs", "class_indices", "layer", "metrics", "steps", "seed", "randomization", "perturbations", "noise_std", "sensitivity_radius", "return_maps")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDICES_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RANDOMIZATION_FIELD_NUMBER: _ClassVar[int]
    PERTURBATIONS_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_RADIUS_FIELD_NUMBER: _ClassVar[int]
    RETURN_MAPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    methods: _containers.RepeatedScalarFieldContainer[Method]
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    class_indices: _containers.RepeatedScalarFieldContainer[int]
    layer: str
    metrics: _containers.RepeatedScalarFieldContainer[Metric]
    steps: int
    seed: int
    randomization: RandomizationMode
    perturbations: int
    noise_std: float
    sensitivity_radius: float
    return_maps: bool
    def __init__(self, model: _Optional[str] = ..., methods: _Optional[_Iterable[_Union[Method, str]]] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., class_indices: _Optional[_Iterable[int]] = ..., layer: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[Metric, str]]] = ..., steps: _Optional[int] = ..., seed: _Optional[int] = ..., randomization: _Optional[_Union[RandomizationMode, str]] = ..., perturbations: _Optional[int] = ..., noise_std: _Optional[float] = ..., sensitivity_radius: _Optional[float] = ..., return_maps: bool = ...) -> None: ...

class EvaluateProgress(_message.Message):
    __slots__ = ("done", "total", "stage")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    stage: str
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., stage: _Optional[str] = ...) -> None: ...

class PerturbationCurve(_message.Message):
    __slots__ = ("curve", "auc")
    CURVE_FIELD_NUMBER: _ClassVar[int]
    AUC_FIELD_NUMBER: _ClassVar[int]
    curve: Tensor
    auc: Tensor
    def __init__(self, curve: _Optional[_Union[Tensor, _Mapping]] = ..., auc: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class RandomizationCurves(_message.Message):
    __slots__ = ("spearman", "ssim", "independent_spearman", "independent_ssim")
    SPEARMAN_FIELD_NUMBER: _ClassVar[int]
    SSIM_FIELD_NUMBER: _ClassVar[int]
    INDEPENDENT_SPEARMAN_FIELD_NUMBER: _ClassVar[int]
    INDEPENDENT_SSIM_FIELD_NUMBER: _ClassVar[int]
    spearman: Tensor
    ssim: Tensor
    independent_spearman: Tensor
    independent_ssim: Tensor
    def __init__(self, spearman: _Optional[_Union[Tensor, _Mapping]] = ..., ssim: _Optional[_Union[Tensor, _Mapping]] = ..., independent_spearman: _Optional[_Union[Tensor, _Mapping]] = ..., independent_ssim: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class MethodEvaluation(_message.Message):
    __slots__ = ("method", "layer", "deletion", "insertion", "randomization", "infidelity", "sensitivity", "maps")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    DELETION_FIELD_NUMBER: _ClassVar[int]
    INSERTION_FIELD_NUMBER: _ClassVar[int]
    RANDOMIZATION_FIELD_NUMBER: _ClassVar[int]
    INFIDELITY_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    method: Method
    layer: str
    deletion: PerturbationCurve
    insertion: PerturbationCurve
    randomization: RandomizationCurves
    infidelity: Tensor
    sensitivity: Tensor
    maps: Tensor
    def __init__(self, method: _Optional[_Union[Method, str]] = ..., layer: _Optional[str] = ..., deletion: _Optional[_Union[PerturbationCurve, _Mapping]] = ..., insertion: _Optional[_Union[PerturbationCurve, _Mapping]] = ..., randomization: _Optional[_Union[RandomizationCurves, _Mapping]] = ..., infidelity: _Optional[_Union[Tensor, _Mapping]] = ..., sensitivity: _Optional[_Union[Tensor, _Mapping]] = ..., maps: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EvaluateResult(_message.Message):
    __slots__ = ("model", "class_indices", "layers", "steps", "methods", "queue_ms", "compute_ms", "work", "warnings", "max_batch_jobs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDICES_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    WORK_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_JOBS_FIELD_NUMBER: _ClassVar[int]
    model: str
    class_indices: _containers.RepeatedScalarFieldContainer[int]
    layers: _containers.RepeatedScalarFieldContainer[str]
    steps: int
    methods: _containers.RepeatedCompositeFieldContainer[MethodEvaluation]
    queue_ms: float
    compute_ms: float
    work: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    max_batch_jobs: int
    def __init__(self, model: _Optional[str] = ..., class_indices: _Optional[_Iterable[int]] = ..., layers: _Optional[_Iterable[str]] = ..., steps: _Optional[int] = ..., methods: _Optional[_Iterable[_Union[MethodEvaluation, _Mapping]]] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., work: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., max_batch_jobs: _Optional[int] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: EvaluateProgress
    result: EvaluateResult
    def __init__(self, progress: _Optional[_Union[EvaluateProgress, _Mapping]] = ..., result: _Optional[_Union[EvaluateResult, _Mapping]] = ...) -> None: ...

class DeepDreamRequest(_message.Message):
    __slots__ = ("model", "input", "objective", "octaves", "octave_scale", "steps_per_octave", "step_size", "jitter", "seed", "progress_every", "array_dtype")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    OCTAVES_FIELD_NUMBER: _ClassVar[int]
    OCTAVE_SCALE_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_OCTAVE_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_EVERY_FIELD_NUMBER: _ClassVar[int]
    ARRAY_DTYPE_FIELD_NUMBER: _ClassVar[int]
    model: str
    input: Input
    objective: Objective
    octaves: int
    octave_scale: float
    steps_per_octave: int
    step_size: float
    jitter: int
    seed: int
    progress_every: int
    array_dtype: DType
    def __init__(self, model: _Optional[str] = ..., input: _Optional[_Union[Input, _Mapping]] = ..., objective: _Optional[_Union[Objective, _Mapping]] = ..., octaves: _Optional[int] = ..., octave_scale: _Optional[float] = ..., steps_per_octave: _Optional[int] = ..., step_size: _Optional[float] = ..., jitter: _Optional[int] = ..., seed: _Optional[int] = ..., progress_every: _Optional[int] = ..., array_dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class DeepDreamProgress(_message.Message):
    __slots__ = ("step", "steps", "octave", "octaves", "objective", "image_png")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    OCTAVE_FIELD_NUMBER: _ClassVar[int]
    OCTAVES_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PNG_FIELD_NUMBER: _ClassVar[int]
    step: int
    steps: int
    octave: int
    octaves: int
    objective: float
    image_png: bytes
    def __init__(self, step: _Optional[int] = ..., steps: _Optional[int] = ..., octave: _Optional[int] = ..., octaves: _Optional[int] = ..., objective: _Optional[float] = ..., image_png: _Optional[bytes] = ...) -> None: ...

class DeepDreamResult(_message.Message):
    __slots__ = ("array", "image_png", "octave_objectives", "steps", "queue_ms", "compute_ms", "max_batch_jobs", "octave_sizes")
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PNG_FIELD_NUMBER: _ClassVar[int]
    OCTAVE_OBJECTIVES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_JOBS_FIELD_NUMBER: _ClassVar[int]
    OCTAVE_SIZES_FIELD_NUMBER: _ClassVar[int]
    array: Tensor
    image_png: bytes
    octave_objectives: _containers.RepeatedScalarFieldContainer[float]
    steps: int
    queue_ms: float
    compute_ms: float
    max_batch_jobs: int
    octave_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, array: _Optional[_Union[Tensor, _Mapping]] = ..., image_png: _Optional[bytes] = ..., octave_objectives: _Optional[_Iterable[float]] = ..., steps: _Optional[int] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., max_batch_jobs: _Optional[int] = ..., octave_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class DeepDreamResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: DeepDreamProgress
    result: DeepDreamResult
    def __init__(self, progress: _Optional[_Union[DeepDreamProgress, _Mapping]] = ..., result: _Optional[_Union[DeepDreamResult, _Mapping]] = ...) -> None: ...
