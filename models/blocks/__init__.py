"""Shared building blocks; each exists once and every model family composes them."""

from .algebra import bn_scale_shift, conv_like, fold_bn, identity_kernel, pad_kernel, scale_output_channels
from .attention import MultiHeadSelfAttention
from .base import MergeCount, Reparameterizable
from .conv_norm import ConvNorm
from .large_kernel import ReparamLargeKernelConv
from .layer_scale import LayerScale2d, fold_layer_scale
from .mlp import ConvMlp
from .mobileone import MobileOneBlock
from .repmixer import RepCPE, RepMixer
from .squeeze_excite import SqueezeExcite

__all__ = [
    "ConvMlp",
    "ConvNorm",
    "LayerScale2d",
    "MergeCount",
    "MobileOneBlock",
    "MultiHeadSelfAttention",
    "RepCPE",
    "RepMixer",
    "ReparamLargeKernelConv",
    "Reparameterizable",
    "SqueezeExcite",
    "bn_scale_shift",
    "conv_like",
    "fold_bn",
    "fold_layer_scale",
    "identity_kernel",
    "pad_kernel",
    "scale_output_channels",
]
