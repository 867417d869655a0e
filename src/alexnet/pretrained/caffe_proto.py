"""The part of Caffe's message schema (src/caffe/proto/caffe.proto, BVLC/caffe) that a net's weights
and its deploy.prototxt need, built at run time with the `protobuf` package: no Caffe, no protoc, no
generated code. Field numbers, types and defaults are Caffe's; fields left out are skipped by the
binary parser and (allow_unknown_field) by the text parser, as Caffe's data layers and solver
settings do not change what a trained net computes.

Both forms of a net exist: `layer` (LayerParameter, field 100, string types, Caffe >= 2015) and the
older `layers` (V1LayerParameter, field 2, enum types), in which bvlc_alexnet.caffemodel was saved.
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"int64": F.TYPE_INT64, "int32": F.TYPE_INT32, "uint32": F.TYPE_UINT32, "uint64": F.TYPE_UINT64,
          "float": F.TYPE_FLOAT, "double": F.TYPE_DOUBLE, "bool": F.TYPE_BOOL, "string": F.TYPE_STRING}

# message -> [(field, number, type, "repeated"/"packed"/default-or-None)]; a type starting with a capital
# letter is a message or enum of this schema.
_MESSAGES: dict[str, list[tuple]] = {
    "BlobShape": [("dim", 1, "int64", "packed")],
    "BlobProto": [("shape", 7, "BlobShape", None), ("data", 5, "float", "packed"), ("diff", 6, "float", "packed"),
                  ("double_data", 8, "double", "packed"), ("double_diff", 9, "double", "packed"),
                  ("num", 1, "int32", "0"), ("channels", 2, "int32", "0"), ("height", 3, "int32", "0"),
                  ("width", 4, "int32", "0")],
    "NetParameter": [("name", 1, "string", None), ("input", 3, "string", "repeated"),
                     ("input_shape", 8, "BlobShape", "repeated"), ("input_dim", 4, "int32", "repeated"),
                     ("layer", 100, "LayerParameter", "repeated"), ("layers", 2, "V1LayerParameter", "repeated")],
    "LayerParameter": [("name", 1, "string", None), ("type", 2, "string", None), ("bottom", 3, "string", "repeated"),
                       ("top", 4, "string", "repeated"), ("blobs", 7, "BlobProto", "repeated"),
                       ("convolution_param", 106, "ConvolutionParameter", None),
                       ("dropout_param", 108, "DropoutParameter", None),
                       ("inner_product_param", 117, "InnerProductParameter", None),
                       ("input_param", 143, "InputParameter", None), ("lrn_param", 118, "LRNParameter", None),
                       ("pooling_param", 121, "PoolingParameter", None), ("relu_param", 123, "ReLUParameter", None)],
    "V1LayerParameter": [("bottom", 2, "string", "repeated"), ("top", 3, "string", "repeated"),
                         ("name", 4, "string", None), ("type", 5, "V1LayerParameter.LayerType", None),
                         ("blobs", 6, "BlobProto", "repeated"),
                         ("convolution_param", 10, "ConvolutionParameter", None),
                         ("dropout_param", 12, "DropoutParameter", None),
                         ("inner_product_param", 17, "InnerProductParameter", None),
                         ("lrn_param", 18, "LRNParameter", None), ("pooling_param", 19, "PoolingParameter", None),
                         ("relu_param", 30, "ReLUParameter", None)],
    "ConvolutionParameter": [("num_output", 1, "uint32", None), ("bias_term", 2, "bool", "true"),
                             ("pad", 3, "uint32", "repeated"), ("kernel_size", 4, "uint32", "repeated"),
                             ("stride", 6, "uint32", "repeated"), ("dilation", 18, "uint32", "repeated"),
                             ("pad_h", 9, "uint32", "0"), ("pad_w", 10, "uint32", "0"),
                             ("kernel_h", 11, "uint32", None), ("kernel_w", 12, "uint32", None),
                             ("stride_h", 13, "uint32", None), ("stride_w", 14, "uint32", None),
                             ("group", 5, "uint32", "1")],
    "PoolingParameter": [("pool", 1, "PoolingParameter.PoolMethod", "MAX"), ("pad", 4, "uint32", "0"),
                         ("pad_h", 9, "uint32", "0"), ("pad_w", 10, "uint32", "0"), ("kernel_size", 2, "uint32", None),
                         ("kernel_h", 5, "uint32", None), ("kernel_w", 6, "uint32", None), ("stride", 3, "uint32", "1"),
                         ("stride_h", 7, "uint32", None), ("stride_w", 8, "uint32", None),
                         ("global_pooling", 12, "bool", "false"),
                         ("round_mode", 13, "PoolingParameter.RoundMode", "CEIL")],
    "LRNParameter": [("local_size", 1, "uint32", "5"), ("alpha", 2, "float", "1"), ("beta", 3, "float", "0.75"),
                     ("norm_region", 4, "LRNParameter.NormRegion", "ACROSS_CHANNELS"), ("k", 5, "float", "1")],
    "InnerProductParameter": [("num_output", 1, "uint32", None), ("bias_term", 2, "bool", "true"),
                              ("axis", 5, "int32", "1"), ("transpose", 6, "bool", "false")],
    "DropoutParameter": [("dropout_ratio", 1, "float", "0.5")],
    "InputParameter": [("shape", 1, "BlobShape", "repeated")],
    "ReLUParameter": [("negative_slope", 1, "float", "0")],
}

_ENUMS: dict[str, dict[str, int]] = {
    "PoolingParameter.PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    "PoolingParameter.RoundMode": {"CEIL": 0, "FLOOR": 1},
    "LRNParameter.NormRegion": {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1},
    "V1LayerParameter.LayerType": {
        "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3, "CONTRASTIVE_LOSS": 37,
        "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6, "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7,
        "ELTWISE": 25, "EXP": 38, "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28, "IM2COL": 11,
        "IMAGE_DATA": 12, "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29,
        "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17, "POWER": 26, "RELU": 18, "SIGMOID": 19,
        "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22,
        "SLICE": 33, "TANH": 23, "WINDOW_DATA": 24, "THRESHOLD": 31},
}

# V1 enum type -> the type string of the new form, for the ones an AlexNet uses.
V1_TYPES = {"CONVOLUTION": "Convolution", "RELU": "ReLU", "LRN": "LRN", "POOLING": "Pooling",
            "INNER_PRODUCT": "InnerProduct", "DROPOUT": "Dropout", "SOFTMAX": "Softmax", "DATA": "Data",
            "SOFTMAX_LOSS": "SoftmaxWithLoss", "ACCURACY": "Accuracy"}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="alexnet_caffe_subset.proto", package="caffe", syntax="proto2")
    messages = {}
    for name, fields in _MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        messages[name] = msg
        for field, number, kind, extra in fields:
            f = msg.field.add(name=field, number=number)
            f.label = F.LABEL_REPEATED if extra in ("repeated", "packed") else F.LABEL_OPTIONAL
            if kind in _TYPES:
                f.type = _TYPES[kind]
            else:
                f.type = F.TYPE_ENUM if kind in _ENUMS else F.TYPE_MESSAGE
                f.type_name = f".caffe.{kind}"
            if extra == "packed":
                f.options.packed = True
            elif extra not in (None, "repeated"):
                f.default_value = extra
    for dotted, values in _ENUMS.items():
        owner, enum_name = dotted.split(".")
        enum = messages[owner].enum_type.add(name=enum_name)
        for value_name, number in values.items():
            enum.value.add(name=value_name, number=number)
    return fdp


@functools.cache
def _classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()  # our own pool: never clashes with another "caffe" package
    pool.Add(_file_descriptor())
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{n}")) for n in _MESSAGES}


def message_class(name: str) -> type:
    """The message class `caffe.<name>` (NetParameter, BlobProto, ...) of the subset schema."""
    return _classes()[name]


def parse_binary(data: bytes, name: str = "NetParameter"):
    """A binary protobuf message (a .caffemodel is a NetParameter, a mean .binaryproto a BlobProto).
    Raises google.protobuf.message.DecodeError on bytes that are not one."""
    message = message_class(name)()
    message.ParseFromString(data)
    return message


def parse_text(text: str, name: str = "NetParameter"):
    """A text-format message (deploy.prototxt). Raises text_format.ParseError on a malformed file."""
    return text_format.Parse(text, message_class(name)(), allow_unknown_field=True)
