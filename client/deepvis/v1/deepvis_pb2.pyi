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
    METHOD_ATTENTION_ROLLOUT: _ClassVar[Method]
    ATTENTION_ROLLOUT: _ClassVar[Method]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]

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
METHOD_ATTENTION_ROLLOUT: Method
ATTENTION_ROLLOUT: Method
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_UINT8: DType
DTYPE_INT64: DType
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
    __slots__ = ("array_dtype", "omit_array", "render", "top_k")
    ARRAY_DTYPE_FIELD_NUMBER: _ClassVar[int]
    OMIT_ARRAY_FIELD_NUMBER: _ClassVar[int]
    RENDER_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    array_dtype: DType
    omit_array: bool
    render: bool
    top_k: int
    def __init__(self, array_dtype: _Optional[_Union[DType, str]] = ..., omit_array: bool = ..., render: bool = ..., top_k: _Optional[int] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "method", "input", "target", "layers", "output", "top_k_channels", "rollout")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    model: str
    method: Method
    input: Input
    target: Target
    layers: _containers.RepeatedScalarFieldContainer[str]
    output: OutputOptions
    top_k_channels: int
    rollout: RolloutOptions
    def __init__(self, model: _Optional[str] = ..., method: _Optional[_Union[Method, str]] = ..., input: _Optional[_Union[Input, _Mapping]] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., layers: _Optional[_Iterable[str]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., top_k_channels: _Optional[int] = ..., rollout: _Optional[_Union[RolloutOptions, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("queue_ms", "compute_ms", "batch_size")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    compute_ms: float
    batch_size: int
    def __init__(self, queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "method", "array", "image_png", "predictions", "target", "timing", "warnings", "arrays", "images", "input_region", "layer")
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
    def __init__(self, model: _Optional[str] = ..., method: _Optional[_Union[Method, str]] = ..., array: _Optional[_Union[Tensor, _Mapping]] = ..., image_png: _Optional[bytes] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., arrays: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., images: _Optional[_Iterable[_Union[NamedImage, _Mapping]]] = ..., input_region: _Optional[_Union[InputRegion, _Mapping]] = ..., layer: _Optional[str] = ...) -> None: ...

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
