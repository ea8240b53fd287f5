"""Shared building blocks; each exists once and every model family composes them."""

from .algebra import bn_scale_shift, conv_like, fold_bn, identity_kernel, pad_kernel, scale_output_channels
from .attention import MultiHeadSelfAttention, SeparableSelfAttention, TokenSelfAttention
from .base import MergeCount, Reparameterizable
from .conv_norm import ConvNorm
from .inverted_residual import InvertedResidual, make_divisible
from .large_kernel import ReparamLargeKernelConv
from .layer_scale import LayerScale2d, fold_layer_scale
from .mlp import ConvMlp, Mlp
from .mobileone import MobileOneBlock
from .patches import fold_patches, unfold_patches
from .repmixer import RepCPE, RepMixer
from .squeeze_excite import SqueezeExcite
from .transformer import TransformerLayer

__all__ = [
    "ConvMlp",
    "ConvNorm",
    "InvertedResidual",
    "LayerScale2d",
    "MergeCount",
    "Mlp",
    "MobileOneBlock",
    "MultiHeadSelfAttention",
    "RepCPE",
    "RepMixer",
    "ReparamLargeKernelConv",
    "Reparameterizable",
    "SeparableSelfAttention",
    "SqueezeExcite",
    "TokenSelfAttention",
    "TransformerLayer",
    "bn_scale_shift",
    "conv_like",
    "fold_bn",
    "fold_layer_scale",
    "fold_patches",
    "identity_kernel",
    "make_divisible",
    "pad_kernel",
    "scale_output_channels",
    "unfold_patches",
]
