"""alexnet: the system of Krizhevsky, Sutskever & Hinton (2012), ImageNet Classification with Deep
Convolutional Neural Networks, as a package: data store and augmentation (§2, §4.1), the two-tower
network (§3), the training recipe (§5), evaluation and the qualitative analyses (§6).

The front door, for a notebook or a script (README "Python"); each name is imported on first use, so
`import alexnet` costs nothing until then:

    list_models()                           the variants: paper, one-tower, six-conv, small, tiny
    create_model(name, **settings)          a fresh net with the paper's initialisation (§5)
    load(path)                              a checkpoint's or a run folder's net, eval mode, on the CPU,
                                            with its mean image, classes and names: net.transforms(views),
                                            net.features(x, layers, relu, towers), net.classes
    predict(net, images, top=5)             the most probable classes of files, folders, PIL images, arrays
    extract(net, data, layers, batch_size)  {layer: array} for a folder, files or a Dataset, in input order
    rdm(features)                           1 - Pearson correlation of every two rows
    evaluate(net, data, views=10)           top-1/top-5 error and per-class accuracy (§6)
    finetune(source, data, out, ...)        §6's fine-tuning on a store or a plain class-folder tree
    ImageFolder(root, image_size)           a class-folder tree as a Dataset; ImageStore a store's split
    export_onnx(net, path)                  the net with its mean subtraction as ONNX
    configure(threads=None)                 the CLI's thread and allocator settings for this process

Modules inside the package import from where things live (alexnet.model.net, ...), never from here.
"""

import importlib

# name -> the module that defines it
_EXPORTS = {
    "list_models": "alexnet.model.net",
    "create_model": "alexnet.model.net",
    "AlexNet": "alexnet.model.net",
    "load": "alexnet.model.checkpoint",
    "predict": "alexnet.evaluate.predict",
    "extract": "alexnet.evaluate.extract",
    "rdm": "alexnet.evaluate.extract",
    "finetune": "alexnet.train.finetune",
    "ImageFolder": "alexnet.data.folder",
    "ImageStore": "alexnet.data.store",
    "export_onnx": "alexnet.evaluate.export",
    "configure": "alexnet.machine",
    "UserError": "alexnet.errors",
}
_ATTRIBUTES = {"__version__": ("alexnet.config", "VERSION")}
# `alexnet.evaluate` is the subpackage itself (Python sets it as this package's attribute once any of
# its modules is imported), made callable: alexnet/evaluate/__init__.py.
_CALLABLE_PACKAGES = {"evaluate": "alexnet.evaluate"}

__all__ = ["__version__", *_EXPORTS, *_CALLABLE_PACKAGES]


def __getattr__(name: str):
    """PEP 562: a front-door name is imported from its module the first time it is asked for."""
    if name in _CALLABLE_PACKAGES:
        return importlib.import_module(_CALLABLE_PACKAGES[name])
    module, attribute = _ATTRIBUTES.get(name, (_EXPORTS.get(name), name))
    if module is None:
        raise AttributeError(f"module 'alexnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # asked once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
