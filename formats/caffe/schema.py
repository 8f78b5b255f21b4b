"""The Caffe message tables the binary reader decodes: field numbers and names from BVLC Caffe's
``src/caffe/proto/caffe.proto`` (public facts), only the fields weightport uses.  Names are the
``.prototxt`` names, so a binary ``.caffemodel`` and a text ``.prototxt`` decode to the same structure.

Pooling field 13 differs between Caffe forks: BVLC's ``round_mode`` (enum, CEIL = 0, FLOOR = 1) and
OpenCV's ``ceil_mode`` (bool, default true) give the value 1 opposite meanings; the binary field is read
as BVLC's ``round_mode`` and a prototxt names which one it means.
"""

from __future__ import annotations

from weightport.formats.caffe.wire import Field

V1_TYPES = {
    0: "NONE", 35: "AbsVal", 1: "Accuracy", 30: "ArgMax", 2: "BNLL", 3: "Concat", 37: "ContrastiveLoss",
    4: "Convolution", 5: "Data", 39: "Deconvolution", 6: "Dropout", 32: "DummyData", 7: "EuclideanLoss",
    25: "Eltwise", 38: "Exp", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 28: "HingeLoss", 11: "Im2col",
    12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN", 29: "MemoryData",
    16: "MultinomialLogisticLoss", 34: "MVN", 17: "Pooling", 26: "Power", 18: "ReLU", 19: "Sigmoid",
    27: "SigmoidCrossEntropyLoss", 36: "Silence", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split",
    33: "Slice", 23: "TanH", 24: "WindowData", 31: "Threshold",
}
# the V1 enum spelling used in old prototxt files (``type: CONVOLUTION``) -> the V2 type name
V1_TYPE_NAMES = {
    "NONE": "NONE", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}
POOL_METHODS = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}
ROUND_MODES = {0: "CEIL", 1: "FLOOR"}
ELTWISE_OPS = {0: "PROD", 1: "SUM", 2: "MAX"}
PHASES = {0: "TRAIN", 1: "TEST"}

BLOB_SHAPE = {1: Field("dim", "int64")}
BLOB = {7: Field("shape", "message", "BlobShape"), 5: Field("data", "float"), 8: Field("double_data", "double"),
        1: Field("num", "int64"), 2: Field("channels", "int64"), 3: Field("height", "int64"),
        4: Field("width", "int64")}
CONVOLUTION = {1: Field("num_output", "int"), 2: Field("bias_term", "bool"), 3: Field("pad", "int"),
               4: Field("kernel_size", "int"), 5: Field("group", "int"), 6: Field("stride", "int"),
               9: Field("pad_h", "int"), 10: Field("pad_w", "int"), 11: Field("kernel_h", "int"),
               12: Field("kernel_w", "int"), 13: Field("stride_h", "int"), 14: Field("stride_w", "int"),
               16: Field("axis", "int64"), 18: Field("dilation", "int")}
POOLING = {1: Field("pool", "enum", enum=POOL_METHODS), 2: Field("kernel_size", "int"), 3: Field("stride", "int"),
           4: Field("pad", "int"), 5: Field("kernel_h", "int"), 6: Field("kernel_w", "int"),
           7: Field("stride_h", "int"), 8: Field("stride_w", "int"), 9: Field("pad_h", "int"),
           10: Field("pad_w", "int"), 12: Field("global_pooling", "bool"),
           13: Field("round_mode", "enum", enum=ROUND_MODES)}
INNER_PRODUCT = {1: Field("num_output", "int"), 2: Field("bias_term", "bool"), 5: Field("axis", "int64"),
                 6: Field("transpose", "bool")}
BATCH_NORM = {1: Field("use_global_stats", "bool"), 2: Field("moving_average_fraction", "float"),
              3: Field("eps", "float")}
SCALE = {1: Field("axis", "int64"), 2: Field("num_axes", "int64"), 4: Field("bias_term", "bool")}
ELTWISE = {1: Field("operation", "enum", enum=ELTWISE_OPS), 2: Field("coeff", "float")}
CONCAT = {1: Field("concat_dim", "int"), 2: Field("axis", "int64")}
FLATTEN = {1: Field("axis", "int64"), 2: Field("end_axis", "int64")}
SOFTMAX = {2: Field("axis", "int64")}
RELU = {1: Field("negative_slope", "float")}
PRELU = {2: Field("channel_shared", "bool")}
DROPOUT = {1: Field("dropout_ratio", "float")}
INPUT = {1: Field("shape", "message", "BlobShape")}
TRANSFORM = {1: Field("scale", "float"), 2: Field("mirror", "bool"), 3: Field("crop_size", "int"),
             4: Field("mean_file", "string"), 5: Field("mean_value", "float"), 6: Field("force_color", "bool"),
             7: Field("force_gray", "bool")}
STATE_RULE = {1: Field("phase", "enum", enum=PHASES)}
LRN_REGIONS = {0: "ACROSS_CHANNELS", 1: "WITHIN_CHANNEL"}
LRN = {1: Field("local_size", "int"), 2: Field("alpha", "float"), 3: Field("beta", "float"),
       4: Field("norm_region", "enum", enum=LRN_REGIONS), 5: Field("k", "float")}
# SSD's fork of caffe.proto (weiliu89/caffe, branch ssd): NormalizeParameter, PermuteParameter
NORMALIZE = {1: Field("across_spatial", "bool"), 3: Field("channel_shared", "bool"), 4: Field("eps", "float")}
PERMUTE = {1: Field("order", "int")}
POWER = {1: Field("power", "float"), 2: Field("scale", "float"), 3: Field("shift", "float")}
RESHAPE = {1: Field("shape", "message", "BlobShape"), 2: Field("axis", "int64"), 3: Field("num_axes", "int64")}
SLICE = {3: Field("axis", "int64"), 2: Field("slice_point", "int"), 1: Field("slice_dim", "int")}

PARAMETERS = {  # V2 LayerParameter field -> (name, table)
    106: ("convolution_param", "ConvolutionParameter"), 121: ("pooling_param", "PoolingParameter"),
    117: ("inner_product_param", "InnerProductParameter"), 139: ("batch_norm_param", "BatchNormParameter"),
    142: ("scale_param", "ScaleParameter"), 110: ("eltwise_param", "EltwiseParameter"),
    104: ("concat_param", "ConcatParameter"), 135: ("flatten_param", "FlattenParameter"),
    125: ("softmax_param", "SoftmaxParameter"), 123: ("relu_param", "ReLUParameter"),
    131: ("prelu_param", "PReLUParameter"), 108: ("dropout_param", "DropoutParameter"),
    143: ("input_param", "InputParameter"), 100: ("transform_param", "TransformationParameter"),
    118: ("lrn_param", "LRNParameter"), 122: ("power_param", "PowerParameter"),
    133: ("reshape_param", "ReshapeParameter"), 126: ("slice_param", "SliceParameter"),
    202: ("permute_param", "PermuteParameter"), 206: ("norm_param", "NormalizeParameter"),
}
V1_PARAMETERS = {  # V1LayerParameter field -> (name, table)
    10: ("convolution_param", "ConvolutionParameter"), 19: ("pooling_param", "PoolingParameter"),
    17: ("inner_product_param", "InnerProductParameter"), 24: ("eltwise_param", "EltwiseParameter"),
    9: ("concat_param", "ConcatParameter"), 39: ("softmax_param", "SoftmaxParameter"),
    30: ("relu_param", "ReLUParameter"), 12: ("dropout_param", "DropoutParameter"),
    36: ("transform_param", "TransformationParameter"), 18: ("lrn_param", "LRNParameter"),
    21: ("power_param", "PowerParameter"), 31: ("slice_param", "SliceParameter"),
}

LAYER = {1: Field("name", "string"), 2: Field("type", "string"), 3: Field("bottom", "string"),
         4: Field("top", "string"), 7: Field("blobs", "message", "BlobProto"),
         8: Field("include", "message", "NetStateRule"), 9: Field("exclude", "message", "NetStateRule"),
         10: Field("phase", "enum", enum=PHASES),
         **{number: Field(name, "message", table) for number, (name, table) in PARAMETERS.items()}}
V1_LAYER = {2: Field("bottom", "string"), 3: Field("top", "string"), 4: Field("name", "string"),
            5: Field("type", "enum", enum=V1_TYPES), 6: Field("blobs", "message", "BlobProto"),
            32: Field("include", "message", "NetStateRule"), 33: Field("exclude", "message", "NetStateRule"),
            **{number: Field(name, "message", table) for number, (name, table) in V1_PARAMETERS.items()}}
NET = {1: Field("name", "string"), 3: Field("input", "string"), 8: Field("input_shape", "message", "BlobShape"),
       4: Field("input_dim", "int64"), 100: Field("layer", "message", "LayerParameter"),
       2: Field("layers", "message", "V1LayerParameter")}

TABLES = {
    "NetParameter": NET, "LayerParameter": LAYER, "V1LayerParameter": V1_LAYER, "BlobProto": BLOB,
    "BlobShape": BLOB_SHAPE, "NetStateRule": STATE_RULE, "ConvolutionParameter": CONVOLUTION,
    "PoolingParameter": POOLING, "InnerProductParameter": INNER_PRODUCT, "BatchNormParameter": BATCH_NORM,
    "ScaleParameter": SCALE, "EltwiseParameter": ELTWISE, "ConcatParameter": CONCAT, "FlattenParameter": FLATTEN,
    "SoftmaxParameter": SOFTMAX, "ReLUParameter": RELU, "PReLUParameter": PRELU, "DropoutParameter": DROPOUT,
    "InputParameter": INPUT, "TransformationParameter": TRANSFORM, "LRNParameter": LRN, "PowerParameter": POWER,
    "ReshapeParameter": RESHAPE, "SliceParameter": SLICE, "NormalizeParameter": NORMALIZE,
    "PermuteParameter": PERMUTE,
}
