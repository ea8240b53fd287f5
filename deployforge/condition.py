"""Condition seeded random weights so that activations stay in the range a trained network works in.

Random init plus stressed BatchNorm statistics (:mod:`deployforge.stress`) lets some families' activations grow
layer after layer: MobileOne-S0's reach ~1e19 and its logits ~1e18, far past float16's 65504, so an FP16
comparison on them judges overflow, not the artifact. :func:`condition_weights` re-estimates every BatchNorm's
running statistics on a batch of image-like inputs (:func:`calibration_images`), as a trained network's
statistics are estimated on its data: each BatchNorm then normalizes what actually reaches it, and activations
stay O(1); it also narrows squeeze-excite gates, which otherwise let an input drift away block after block.
Affines and layer scales keep their stressed values; the re-estimated statistics are those of random features,
far from a fresh BatchNorm's mean 0 / variance 1, so a fold that drops a term still shows.
docs/design.md, "Parity and tolerances", gives the figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deployforge.models.blocks import SqueezeExcite

from .report import ConditioningReport

CALIBRATION_BATCH = 8
CALIBRATION_SEED = 2  # apart from the weights' seed (0) and the parity inputs' (1)
# Smallest channel variance, as a fraction of its BatchNorm's median: gain at most 10x the layer's typical one.
VARIANCE_FLOOR = 1e-2
# Largest spread of a squeeze-excite gate's logit over the calibration batch: gates 0.5 ± ~3e-4, so a broken squeeze
# path still moves the output by ~5e-4 of its value (50x the FP32 bound); see condition_weights.
GATE_SPREAD = 1e-3
# Weight of the mean component added to every spatial kernel, against the kernel's mean |weight| (see _low_pass).
# A compromise measured on FP16 packages at the published sizes: 0.35 left MobileOne-S2 at rel-L2 1.06e-2, 0.5 took
# MobileViT-XXS to 1.01e-2; at 0.42 the probed models land at 3.8e-3 to 9.0e-3 (docs/design.md).
LOW_PASS = 0.42
_DISCS = 3  # hard-edged discs per image: occlusion edges
_CHROMA = 0.35  # amplitude of the per-channel field against the shared luminance field


def _report(
    batchnorms: int, gates: int, batch: int, input_size: int, seed: int, low_pass: float, kernels: int
) -> ConditioningReport:
    if not batchnorms:
        return ConditioningReport("not conditioned: no BatchNorm to re-estimate", 0, batch, input_size, seed)
    smoothed = f"{kernels} spatial kernels given a mean component ({low_pass:g} of mean |weight|), " if kernels else ""
    narrowed = f", {gates} squeeze-excite gate logits narrowed to spread {GATE_SPREAD}" if gates else ""
    description = (
        f"{smoothed}{batchnorms} BatchNorm running statistics re-estimated{narrowed} on {batch} smooth random "
        f"{input_size}px images (seed {seed}); BatchNorm affines and layer scales kept stressed"
    )
    return ConditioningReport(description, batchnorms, batch, input_size, seed, gates, low_pass, kernels)


def _octave_noise(count: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Sum of bilinearly upsampled Gaussian grids of 2, 4, 8, ... cells, each weighted by 1/cells (1/f)."""
    field = torch.zeros(count, channels, size, size)
    cells = 2
    while cells <= max(2, size // 2):
        grid = torch.randn(count, channels, cells, cells, generator=generator)
        field += F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False) / cells
        cells *= 2
    return field


def _unit(count: int, generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.empty(count, 1, 1, 1).uniform_(low, high, generator=generator)


def calibration_images(
    count: int,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = CALIBRATION_SEED,
) -> torch.Tensor:
    """A reproducible batch of smooth, image-like inputs, normalized as the model expects: ``(count, 3, size, size)``.

    There is no dataset offline, so the images imitate what matters to BatchNorm statistics in natural images:
    a roughly 1/f amplitude spectrum (octaves of upsampled noise, most energy at low frequencies: neighbouring
    pixels are correlated, unlike white noise), strongly correlated colour channels (a shared luminance field
    plus a weaker per-channel one), an illumination gradient, and a few hard occlusion edges (discs of one
    colour). Each image is stretched to a random range inside [0, 1] (contrast varies between photos), then
    normalized with ``mean`` and ``std``, like a photo scaled to [0, 1]: ImageNet's statistics give values
    of mean ~0 and spread ~1.

    Args:
        count: images in the batch.
        size: image side in pixels.
        mean: per-channel normalization mean.
        std: per-channel normalization std.
        seed: generator seed.
    """
    image = _images01(count, size, seed)
    return (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def calibration_pixels(count: int, size: int, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """The images of :func:`calibration_images` before normalization, as 16-bit pixels: ``uint16 (count, 3, S, S)``.

    Stored as a photo is, they can be written beside an export compactly and normalized again, bit for bit, by
    :func:`deployforge.golden.normalize` on a machine without torch.
    """
    return np.clip(np.round(_images01(count, size, seed).numpy() * 65535.0), 0, 65535).astype(np.uint16)


def _images01(count: int, size: int, seed: int) -> torch.Tensor:
    """The smooth random images of :func:`calibration_images`, scaled to [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    image = _octave_noise(count, 1, size, generator) + _CHROMA * _octave_noise(count, 3, size, generator)
    axis = torch.linspace(-1.0, 1.0, size)
    angle = _unit(count, generator, 0.0, 2 * math.pi)
    ramp = torch.cos(angle) * axis.view(1, 1, 1, size) + torch.sin(angle) * axis.view(1, 1, size, 1)
    image += _unit(count, generator, 0.0, 0.5) * ramp
    rows, cols = axis.view(size, 1), axis.view(1, size)
    for _ in range(_DISCS):
        centre = torch.empty(count, 2, 1, 1).uniform_(-1.0, 1.0, generator=generator)
        radius = _unit(count, generator, 0.1, 0.5)
        inside = (rows - centre[:, :1]) ** 2 + (cols - centre[:, 1:]) ** 2 < radius**2
        colour = torch.randn(count, 3, 1, 1, generator=generator) * image.std(dim=(1, 2, 3), keepdim=True)
        image = torch.where(inside, colour + image.mean(dim=(1, 2, 3), keepdim=True), image)
    low = image.amin(dim=(1, 2, 3), keepdim=True)
    span = image.amax(dim=(1, 2, 3), keepdim=True) - low
    floor, ceiling = _unit(count, generator, 0.0, 0.25), _unit(count, generator, 0.75, 1.0)
    return floor + (image - low) / span * (ceiling - floor)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
    ]


def _estimate(floor: float) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
    """A forward pre-hook that sets a BatchNorm's running statistics to those of the input it is about to see."""

    def hook(norm: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        features = args[0]
        variance, mean = torch.var_mean(features, dim=[d for d in range(features.dim()) if d != 1], correction=1)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(variance.clamp_min(floor * float(variance.median())))
        norm.num_batches_tracked.fill_(1)

    return hook


def _narrow(conv: nn.Module, _: tuple[torch.Tensor, ...], logits: torch.Tensor) -> torch.Tensor:
    """A forward hook on a gate's last conv: scale its weights so its output spreads at most GATE_SPREAD."""
    scale = min(1.0, GATE_SPREAD / max(float(logits.std()), 1e-12))
    conv.weight.mul_(scale)
    if conv.bias is not None:
        conv.bias.mul_(scale)
    return logits * scale


def _low_pass(model: nn.Module, weight: float) -> int:
    """Add a mean component to every spatial kernel; return how many convolutions were changed.

    Each ``(out, in)`` slice of a ``k×k`` kernel (k > 1) gets ``weight · mean|w|`` added to every tap, with the
    sign of the slice's sum. Random zero-mean kernels are high-pass filters: on image-like features, whose
    energy sits at low frequencies, they pass the white rounding noise of every layer with more gain than the
    signal, and a deep stack of them is chaotic (MobileOne-S0 conditioned without this: a 1e-3 relative input
    change moved the logits by 10 %, so FP16's weight rounding alone gave rel-L2 3e-2). Filters learned on
    images respond to local averages; with the mean component the same 1e-3 moves the logits by 0.2-0.5 %.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1 and weight > 0:
            kernel = module.weight
            taps = kernel.abs().mean(dim=(2, 3), keepdim=True)
            kernel.add_(weight * taps * torch.sign(kernel.sum(dim=(2, 3), keepdim=True)))
            changed += 1
    return changed


@torch.no_grad()
def condition_weights(
    model: nn.Module,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = CALIBRATION_SEED,
    batch: int = CALIBRATION_BATCH,
    variance_floor: float = VARIANCE_FLOOR,
    low_pass: float = LOW_PASS,
) -> ConditioningReport:
    """Give spatial kernels a mean component, then re-estimate every BatchNorm's statistics, in place.

    First every ``k×k`` kernel gets a mean component (:func:`_low_pass`), so the network stops amplifying
    rounding noise layer after layer. Then one forward pass in eval mode (dropout and the like off) in which
    each BatchNorm, just before it runs, takes the mean and (unbiased) variance of its actual input over the
    batch and every position as its running statistics: what a training-mode pass with ``momentum=None`` over
    this one batch would store, given that every BatchNorm before it already normalizes with its own new
    statistics. A channel's variance is kept at least ``variance_floor`` times its BatchNorm's median: a
    channel almost silent on a small batch (a ReLU closed on every image) would otherwise multiply its input
    by thousands on the first image that opens it.

    In the same pass, each squeeze-excite gate's last conv is scaled down so that the gate's logits spread at
    most :data:`GATE_SPREAD` over the batch. ``x · sigmoid(z(x))`` grows faster than ``x``: an image with more
    energy than the calibration images gets gates nearer 1, and after the next BatchNorm (estimated on the
    others) it is further ahead. Over MobileOne-S4's 12 gated blocks, one held-out image's activations grew 25x
    against the others' (to 4e3); N(0, 1) noise at 64 px, 100x the images' energy, reached 2.5e5 and made the
    network chaotic (a 1e-7 input change moved the logits by 0.27, so the fold's rounding breached the FP32
    bound 3e4-fold). A spread of 0.1 fixes the images but not the noise, 0.01 not quite (6.6e-5); 1e-3 keeps
    both within bounds (fold error 2-9e-6) while the gate still depends on its input.

    No other parameter changes: BatchNorm affines and layer scales keep their (stressed) values. A model without
    BatchNorm is returned unchanged (its kernels too).

    Args:
        model: the model to condition (its weights already drawn and stressed).
        input_size: side of the calibration images (the model's input size).
        mean: per-channel normalization mean of the model's input.
        std: per-channel normalization std of the model's input.
        seed: seed of the calibration images.
        batch: number of calibration images.
        variance_floor: smallest channel variance, as a fraction of its BatchNorm's median channel variance.
        low_pass: weight of the mean component added to spatial kernels (0 adds none).

    Returns:
        What was re-estimated and narrowed, on which batch.
    """
    norms = _batchnorms(model)
    gates = [module.fc2 for module in model.modules() if isinstance(module, SqueezeExcite)] if norms else []
    if not norms:
        return _report(0, 0, batch, input_size, seed, low_pass, 0)
    report = _report(len(norms), len(gates), batch, input_size, seed, low_pass, _low_pass(model, low_pass))
    images = calibration_images(batch, input_size, mean, std, seed)
    modes = {module: module.training for module in model.modules()}
    handles = [norm.register_forward_pre_hook(_estimate(variance_floor)) for norm in norms]
    handles += [gate.register_forward_hook(_narrow) for gate in gates]
    try:
        model.eval()
        model(images)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.train(training)
    return report


@dataclass(frozen=True)
class ActivationStats:
    """How large a model's activations are, and how much its logits depend on the input, on one batch.

    Attributes:
        max_activation: largest ``|value|`` of any floating-point tensor any module outputs (logits included).
        max_logit: largest ``|logit|``.
        input_dependence: :func:`input_dependence` of the logits.
    """

    max_activation: float
    max_logit: float
    input_dependence: float


def input_dependence(logits: torch.Tensor) -> float:
    """The fraction of the logits' spread that changes with the input, in [0, 1].

    Each row is first centred (softmax ignores a shift common to all classes). With ``z[n, k]`` the centred
    logit of input ``n`` and class ``k``, the total variance ``mean(z²)`` splits into the variance across
    inputs within each class, averaged over classes, and the variance across classes of the per-class means
    (a bias that picks the same class whatever the input). The result is the first part over the total:
    0 when every input gets the same logits, 1 when no class is favoured on average.

    Args:
        logits: ``(inputs, classes)``, at least two inputs.
    """
    centred = logits.double() - logits.double().mean(dim=1, keepdim=True)
    total = centred.pow(2).mean()
    if total == 0:
        return 0.0
    return float(centred.var(dim=0, unbiased=False).mean() / total)


@torch.no_grad()
def activation_stats(model: nn.Module, inputs: torch.Tensor) -> ActivationStats:
    """Run ``model`` on ``inputs`` with a forward hook on every module and measure its activations.

    Args:
        model: the model, in the mode it is to be measured in (usually eval).
        inputs: a batch of at least two inputs.
    """
    largest = [0.0]

    def hook(_: nn.Module, __: object, output: object) -> None:
        for tensor in output if isinstance(output, tuple | list) else (output,):
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
                peak = float(tensor.detach().abs().max())
                largest[0] = max(largest[0], math.inf if math.isnan(peak) else peak)

    handles = [module.register_forward_hook(hook) for module in model.modules()]
    try:
        logits = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return ActivationStats(
        max_activation=largest[0], max_logit=float(logits.abs().max()), input_dependence=input_dependence(logits)
    )
