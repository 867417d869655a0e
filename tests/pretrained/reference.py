"""Independent references for the importer tests: a protobuf wire-format writer (field numbers typed
in from Caffe's caffe.proto, not taken from alexnet.pretrained.caffe_proto) and float64 NumPy forward
passes written from Caffe's and torchvision's layer definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------------
# protobuf wire format: varint keys, length-delimited submessages and packed floats
# ---------------------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes | str | int) -> bytes:
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | 2) + varint(len(data)) + data


def blob(values: np.ndarray, legacy: bool) -> bytes:
    """BlobProto: shape = 7 (BlobShape.dim = 1, packed int64), data = 5 (packed float); legacy
    num/channels/height/width = 1..4."""
    values = np.asarray(values, np.float32)
    if legacy:
        dims = [1] * (4 - values.ndim) + list(values.shape)
        head = b"".join(field(n, d) for n, d in zip((1, 2, 3, 4), dims))
    else:
        head = field(7, field(1, b"".join(varint(d) for d in values.shape)))
    return head + field(5, values.astype("<f4").tobytes())


def caffemodel(layers: list[tuple[str, str, list[np.ndarray]]], v1: bool) -> bytes:
    """NetParameter with `layer` = 100 (LayerParameter: name 1, type 2 string, blobs 7) or the old
    `layers` = 2 (V1LayerParameter: name 4, type 5 enum, blobs 6)."""
    v1_types = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "LRN": 15, "Pooling": 17, "Dropout": 6}
    out = [field(1, "AlexNet")]
    for name, kind, blobs in layers:
        if v1:
            body = field(4, name) + field(5, v1_types[kind]) + b"".join(field(6, blob(b, True)) for b in blobs)
            out.append(field(2, body))
        else:
            out.append(field(100, field(1, name) + field(2, kind) + b"".join(field(7, blob(b, False)) for b in blobs)))
    return b"".join(out)


def mean_binaryproto(mean_bgr_chw: np.ndarray) -> bytes:
    return blob(mean_bgr_chw[None], legacy=True)


# ---------------------------------------------------------------------------------------------------
# bvlc_alexnet's deploy.prototxt, in both forms
# ---------------------------------------------------------------------------------------------------

CONV = {"conv1": (96, 11, 4, 0, 1), "conv2": (256, 5, 1, 2, 2), "conv3": (384, 3, 1, 1, 1),
        "conv4": (384, 3, 1, 1, 2), "conv5": (256, 3, 1, 1, 2)}
LAYERS = [("conv1", "Convolution"), ("relu1", "ReLU"), ("norm1", "LRN"), ("pool1", "Pooling"),
          ("conv2", "Convolution"), ("relu2", "ReLU"), ("norm2", "LRN"), ("pool2", "Pooling"),
          ("conv3", "Convolution"), ("relu3", "ReLU"), ("conv4", "Convolution"), ("relu4", "ReLU"),
          ("conv5", "Convolution"), ("relu5", "ReLU"), ("pool5", "Pooling"), ("fc6", "InnerProduct"),
          ("relu6", "ReLU"), ("drop6", "Dropout"), ("fc7", "InnerProduct"), ("relu7", "ReLU"),
          ("drop7", "Dropout"), ("fc8", "InnerProduct")]
V1_NAMES = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "LRN": "LRN", "Pooling": "POOLING",
            "InnerProduct": "INNER_PRODUCT", "Dropout": "DROPOUT", "Softmax": "SOFTMAX"}


def _params(name: str, kind: str, conv: dict, fc: int) -> str:
    if kind == "Convolution":
        n, k, s, p, g = conv[name]
        extra = (f" pad: {p}" if p else "") + (f" group: {g}" if g > 1 else "") + (f" stride: {s}" if s > 1 else "")
        return f"convolution_param {{ num_output: {n} kernel_size: {k}{extra} }}"
    if kind == "LRN":
        return "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }"
    if kind == "Pooling":
        return "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"
    if kind == "InnerProduct":
        return f"inner_product_param {{ num_output: {1000 if name == 'fc8' else fc} }}"
    if kind == "Dropout":
        return "dropout_param { dropout_ratio: 0.5 }"
    return ""


def deploy_prototxt(v1: bool = False, layers=LAYERS, conv: dict = CONV, fc: int = 4096) -> str:
    """The layers of bvlc_alexnet's deploy.prototxt; `param { lr_mult }` blocks as the real file has
    them (fields the importer's schema does not know)."""
    lines = ['name: "AlexNet"']
    if v1:
        lines += ['input: "data"', "input_dim: 10", "input_dim: 3", "input_dim: 227", "input_dim: 227"]
    else:
        lines.append('layer { name: "data" type: "Input" top: "data" '
                     'input_param { shape: { dim: 10 dim: 3 dim: 227 dim: 227 } } }')
    bottom = "data"
    for name, kind in list(layers) + [("prob", "Softmax")]:
        top = bottom if kind in ("ReLU", "Dropout") else name
        lr = " param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }"
        lr = lr if kind == "Convolution" and not v1 else ""
        kind_text = V1_NAMES[kind] if v1 else f'"{kind}"'
        lines.append(f'{"layers" if v1 else "layer"} {{ name: "{name}" type: {kind_text} bottom: "{bottom}" '
                     f'top: "{top}"{lr} {_params(name, kind, conv, fc)} }}')
        bottom = top
    return "\n".join(lines) + "\n"


def random_caffe_weights(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Full-size random weights in Caffe's layout (conv: out x in/group x k x k, BGR input for conv1),
    scaled so that activations neither vanish nor explode through the eight layers."""
    shapes = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
              "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3), "fc6": (4096, 9216), "fc7": (4096, 4096),
              "fc8": (1000, 4096)}
    out = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        out[name] = (w, rng.normal(0.0, 0.1, shape[0]).astype(np.float32))
    return out


def write_caffe_files(folder: Path, weights, mean_bgr, v1: bool = False) -> tuple[Path, Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    proto, model, mean = folder / "deploy.prototxt", folder / "bvlc_alexnet.caffemodel", folder / "mean.binaryproto"
    proto.write_text(deploy_prototxt(v1))
    layers = [(name, kind, list(weights[name]) if name in weights else []) for name, kind in LAYERS]
    model.write_bytes(caffemodel(layers, v1))
    mean.write_bytes(mean_binaryproto(mean_bgr))
    return proto, model, mean


# ---------------------------------------------------------------------------------------------------
# float64 forward passes
# ---------------------------------------------------------------------------------------------------


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, group: int = 1) -> np.ndarray:
    """Caffe's Convolution (= torch's conv2d): (C, H, W) -> (O, H', W'), output size floor((H + 2p - k)/s) + 1,
    input channel block g feeding output block g."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # C,H',W',k,k
    cin, cout = x.shape[0] // group, w.shape[0] // group
    outs = [np.einsum("chwij,ocij->ohw", windows[g * cin:(g + 1) * cin], w[g * cout:(g + 1) * cout], optimize=True)
            for g in range(group)]
    return np.concatenate(outs) + b[:, None, None]


def lrn_across(x: np.ndarray, n: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """Caffe's LRN, ACROSS_CHANNELS: x / (k + alpha/n * sum of x^2 over the n channels centred on each,
    zero-padded at the ends)^beta."""
    sq = np.pad(x * x, ((n // 2, n // 2), (0, 0), (0, 0)))
    window = sum(sq[i : i + x.shape[0]] for i in range(n))
    return x / (k + alpha / n * window) ** beta


def max_pool(x: np.ndarray, k: int, s: int, ceil: bool) -> np.ndarray:
    """Caffe's MAX pooling (ceil: pooled = ceil((H - k)/s) + 1, the last windows clipped at the edge)."""
    h = x.shape[1]
    out = (-(-(h - k) // s) if ceil else (h - k) // s) + 1
    y = np.empty((x.shape[0], out, out))
    for i in range(out):
        for j in range(out):
            y[:, i, j] = x[:, i * s : min(i * s + k, h), j * s : min(j * s + k, h)].max(axis=(1, 2))
    return y


def relu(x):
    return np.maximum(x, 0)


def caffe_forward(bgr_input: np.ndarray, weights) -> np.ndarray:
    """bvlc_alexnet at test time on one (3, 227, 227) BGR input (mean already subtracted): the logits."""
    w = {k: (a.astype(np.float64), b.astype(np.float64)) for k, (a, b) in weights.items()}
    x = max_pool(lrn_across(relu(conv(bgr_input, *w["conv1"], 4, 0)), 5, 1e-4, 0.75, 1.0), 3, 2, True)
    x = max_pool(lrn_across(relu(conv(x, *w["conv2"], 1, 2, 2)), 5, 1e-4, 0.75, 1.0), 3, 2, True)
    x = relu(conv(x, *w["conv3"], 1, 1))
    x = relu(conv(x, *w["conv4"], 1, 1, 2))
    x = max_pool(relu(conv(x, *w["conv5"], 1, 1, 2)), 3, 2, True)
    x = x.reshape(-1)
    x = relu(w["fc6"][0] @ x + w["fc6"][1])  # dropout: identity at test time
    x = relu(w["fc7"][0] @ x + w["fc7"][1])
    return w["fc8"][0] @ x + w["fc8"][1]


def adaptive_avg_pool(x: np.ndarray, out: int) -> np.ndarray:
    """torch's AdaptiveAvgPool2d: bin i spans [floor(i H / out), ceil((i + 1) H / out))."""
    h = x.shape[1]
    y = np.empty((x.shape[0], out, out))
    for i in range(out):
        for j in range(out):
            r0, r1 = (i * h) // out, -(-((i + 1) * h) // out)
            c0, c1 = (j * h) // out, -(-((j + 1) * h) // out)
            y[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return y


def torchvision_forward(rgb01: np.ndarray, state) -> np.ndarray:
    """torchvision.models.alexnet in eval mode on one normalised (3, 224, 224) RGB input: the logits."""
    p = {k: v.double().numpy() for k, v in state.items()}

    def c(x, i, s, pad):
        return relu(conv(x, p[f"features.{i}.weight"], p[f"features.{i}.bias"], s, pad))

    x = max_pool(c(rgb01, 0, 4, 2), 3, 2, False)
    x = max_pool(c(x, 3, 1, 2), 3, 2, False)
    x = max_pool(c(c(c(x, 6, 1, 1), 8, 1, 1), 10, 1, 1), 3, 2, False)
    x = adaptive_avg_pool(x, 6).reshape(-1)
    x = relu(p["classifier.1.weight"] @ x + p["classifier.1.bias"])
    x = relu(p["classifier.4.weight"] @ x + p["classifier.4.bias"])
    return p["classifier.6.weight"] @ x + p["classifier.6.bias"]


def photo_path() -> Path:
    """A real photograph that ships with matplotlib (Grace Hopper, 512x600 JPEG)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"

