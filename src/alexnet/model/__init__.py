"""§3 The architecture (and §4.2's dropout): the net of Fig. 2 and its parts.

    net.py         AlexNet, layer by layer in the paper's order; its layer spec (§3.5), the paper's
                   dropout (§4.2) and initialisation (§5), parameter and multiply-add counts
    lrn.py         §3.3 local response normalisation: the one seam, choosing how it is computed
    lrn_op.py      §3.3 on the CPU as the torch operator alexnet::lrn (C++ in csrc/lrn.cpp, built on
                   first use with torch.utils.cpp_extension into a private folder)
    parallel.py    §3.2 the two towers on two devices
    checkpoint.py  a net's weights and run state on disk: safe save and load, the net of a checkpoint

The geometry (kernels per layer, map sizes) is read off the settings in alexnet/config.py, which
validates them.
"""

from alexnet.config import VARIANTS, conv_channels, map_sizes, variant_config
from alexnet.model.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint, save_checkpoint
from alexnet.model.lrn import LocalResponseNorm, local_response_norm
from alexnet.model.net import (AlexNet, ConvSpec, PaperDropout, conv_layer, count_parameters, create_model, init_paper_,
                               layer_spec, multiply_adds)
from alexnet.model.parallel import TwoTowerAlexNet

__all__ = ["VARIANTS", "AlexNet", "ConvSpec", "LocalResponseNorm", "PaperDropout", "TwoTowerAlexNet",
           "checkpoint_config", "conv_channels", "conv_layer", "count_parameters", "create_model", "init_paper_",
           "layer_spec", "load_checkpoint", "local_response_norm", "map_sizes", "model_from_checkpoint",
           "multiply_adds", "save_checkpoint", "variant_config"]
