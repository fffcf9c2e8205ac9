"""Convolutions run another way on CPU where oneDNN runs them slowly; the same math.

A convolution with one group maps the input's C*H*W numbers to the output's linearly, and every
entry of that matrix is one weight or zero. On 2 CPU threads (256 images) three of the
CNN-TreeVAE's layer kinds run faster as something other than oneDNN's convolution:

* small maps (the matrix has at most ``SMALL_MATRIX`` entries: every 3x3 conv on the 2x2
  latents, the 7x7 stride-5 layers), where per-call overhead dominates: the matrix is gathered
  from the weight through an index cached per geometry, and forward and backward are matrix
  multiplies (forward + backward 0.35-0.55 -> 0.19-0.35 ms; 2.3 -> 1.2 ms).
* a stride-1 transposed conv to at most ``FEW_CHANNELS`` channels (the leaf decoders' last
  layer, 12x12, 6 -> 1), oneDNN's weakest case: its forward is a multiply of each input row by a
  row-banded matrix, a strided view of the padded kernel, and a sum over kernel rows
  (``_transposed_matmul``; forward 33 -> 7 ms as the full matrix with AVX-512, where the band
  is not measured yet; 7.7 -> 4.7 ms from the full matrix to the band on an AVX2-only CPU).
* any other stride-1 transposed conv (the decoders' 12x12, 11 -> 6): with AVX-512 its forward
  is the direct convolution with the flipped kernel, which oneDNN runs well there (forward 9.8 ->
  6.9 ms); on an AVX2-only CPU, where that direct form is slow, it takes the banded multiply
  while its matrix has at most ``FEW_CHANNELS_MATRIX`` entries or its kernel is large and the
  band narrow (``_band_is_narrow``), else oneDNN's own.

The two transposed kinds keep oneDNN's backward for the input gradient. A stride-1 layer with a
large kernel can take its weight gradient as a convolution of the input with the output gradient,
batch and channels swapped (``_swaps_weight_grad``): on an AVX2-only CPU every such layer (the
encoder's and decoders' 12x12 layers; oneDNN's own is 1.5-5x slower there), with AVX-512 those
whose smaller map is no larger than the kernel (the encoder's 11 -> 21 and the decoders' 11 -> 6
layers, whose gradient oneDNN takes 1.4-1.9x slower). Such a conv that would otherwise run
natively takes the plan 'own-backward': torch's forward; that weight gradient; and on an AVX2-only
CPU its input gradient, a transposed conv, as the banded multiply where the band is narrow (the
encoder's 11 -> 21 layer: 62 -> 36 ms; with AVX-512 oneDNN's is faster, 16.6 against 18.5 ms).

Each path computes the same linear map and gradients as torch's, with the sums taken in another
order (float rounding; tests/test_dense_conv.py). Whole step, README "Benchmarks". CUDA,
autocast, non-contiguous input, groups and dilation take the native path, and so does everything
inside ``native_convolutions()``, which benchmarks and tests use for the plain procedure. The
small multiply also takes and gives channels-last tensors (``Conv2d.channels_last_output``):
the ConvBlocks on the 2x2 latents keep their conv -> BatchNorm -> act chains channels-last,
where torch's CPU BatchNorm is 3-4x faster, with no copy between the layers. Several layers of
one geometry run as one call (``depth_batched.py``): ``conv_with_weight`` (layers that read one
input, their weights stacked on the output channels) and ``stacked_small_conv`` (k small
convolutions, each on its own input, as one batched multiply).
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SMALL_MATRIX = 1 << 19
FEW_CHANNELS = 3
FEW_CHANNELS_MATRIX = 1 << 22
SWAP_MIN_KERNEL = 10
BAND_MAX_WIDTH_PER_KERNEL = 2.5

_native_only = False


@contextlib.contextmanager
def native_convolutions() -> Iterator[None]:
    """Every convolution of this module runs through torch's own kernels inside the block."""
    global _native_only
    before, _native_only = _native_only, True
    try:
        yield
    finally:
        _native_only = before


@functools.lru_cache(maxsize=64)
def _matrix_index(weight_shape: tuple[int, ...], transposed: bool, stride: tuple[int, int],
                  padding: tuple[int, int], output_padding: tuple[int, int],
                  in_hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int, int]]:
    """Positions into the flat weight, (in_features, out_features), with n = its size for a
    zero; and the output's (C, H, W).

    Found by running the convolution itself, in float64, on one-hot images with the weights
    numbered 1..n: each output of a one-hot input is exactly one weight's number, or 0.
    """
    n = 1
    for size in weight_shape:
        n *= size
    in_channels = weight_shape[0] if transposed else weight_shape[1]
    in_features = in_channels * in_hw[0] * in_hw[1]
    numbered = torch.arange(1, n + 1, dtype=torch.float64).view(weight_shape)
    rows = []
    for start in range(0, in_features, 1024):        # a few one-hot images at a time: bounded memory
        count = min(1024, in_features - start)
        one_hot = torch.zeros(count, in_features, dtype=torch.float64)
        one_hot[torch.arange(count), torch.arange(start, start + count)] = 1.0
        one_hot = one_hot.view(count, in_channels, *in_hw)
        if transposed:
            out = F.conv_transpose2d(one_hot, numbered, stride=stride, padding=padding, output_padding=output_padding)
        else:
            out = F.conv2d(one_hot, numbered, stride=stride, padding=padding)
        rows.append(out.round().long().flatten(1))
    index = torch.cat(rows) - 1
    index[index < 0] = n
    return index, tuple(out.shape[1:])


def _gathered_matrix(weight: Tensor, index: Tensor) -> Tensor:
    return torch.take(torch.cat([weight.reshape(-1), weight.new_zeros(1)]), index)


@functools.lru_cache(maxsize=64)
def _layout_index(weight_shape: tuple[int, ...], transposed: bool, stride: tuple[int, int],
                  padding: tuple[int, int], output_padding: tuple[int, int], in_hw: tuple[int, int],
                  in_channels_last: bool, out_channels_last: bool) -> tuple[Tensor, tuple[int, int, int]]:
    """``_matrix_index`` with its rows (input) and/or columns (output) ordered (H, W, C), the
    memory order of a channels-last tensor, so that such a tensor flattens without a copy."""
    index, out_shape = _matrix_index(weight_shape, transposed, stride, padding, output_padding, in_hw)
    if in_channels_last:
        index = index.view(-1, *in_hw, index.shape[1]).permute(1, 2, 0, 3).reshape(index.shape)
    if out_channels_last:
        index = index.view(index.shape[0], *out_shape).permute(0, 2, 3, 1).reshape(index.shape)
    return index, out_shape


def _flat(x: Tensor, channels_last: bool) -> Tensor:
    """(N, C*H*W) in (C, H, W) order, or in (H, W, C) order for a channels-last tensor (a view)."""
    return (x.permute(0, 2, 3, 1) if channels_last else x).reshape(x.shape[0], -1)


def _unflat(flat: Tensor, shape: tuple[int, int, int], channels_last: bool) -> Tensor:
    """Inverse of ``_flat``: (N, C, H, W), channels-last strided when the features are (H, W, C)."""
    c, h, w = shape
    if channels_last:
        return flat.view(flat.shape[0], h, w, c).permute(0, 3, 1, 2)
    return flat.view(flat.shape[0], c, h, w)


class _SmallConvAsMatmul(torch.autograd.Function):
    """y = x_flat @ M(weight), M gathered through ``index``; both gradients by multiplies. Input
    and output may each be channels-last (``index`` ordered to match, ``_layout_index``)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, index: Tensor, out_shape: tuple[int, int, int],
                in_channels_last: bool, out_channels_last: bool) -> Tensor:
        # The matrix is small (SMALL_MATRIX entries at most): kept for the backward, not gathered twice.
        matrix = _gathered_matrix(weight, index)
        ctx.save_for_backward(x, matrix, index)
        ctx.weight_shape = weight.shape
        ctx.layouts = (in_channels_last, out_channels_last)
        return _unflat(_flat(x, in_channels_last) @ matrix, out_shape, out_channels_last)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, matrix, index = ctx.saved_tensors
        in_channels_last, out_channels_last = ctx.layouts
        flat_grad = _flat(grad_out, out_channels_last)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _unflat(flat_grad @ matrix.t(), x.shape[1:], in_channels_last)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(index, _flat(x, in_channels_last).t() @ flat_grad, ctx.weight_shape)
        return grad_x, grad_w, None, None, None, None


def _weight_grad(index: Tensor, grad_matrices: Tensor, weight_shape: torch.Size) -> Tensor:
    """The gradient of the weight(s) that ``index`` gathered into matrices, from the matrices'
    gradient ((in, out), or (k, in, out) for k stacked layers): each weight's is the sum over
    the entries that hold it; each layer's last bin collects its zeros' and is dropped."""
    layers = grad_matrices.numel() // index.numel()
    n = weight_shape.numel() // layers
    bins = index
    if layers > 1:      # layer i's entries fall in bins [i (n + 1), (i + 1)(n + 1))
        bins = index.unsqueeze(0) + torch.arange(0, layers * (n + 1), n + 1, device=index.device).view(-1, 1, 1)
    grad = torch.bincount(bins.flatten(), grad_matrices.flatten(), minlength=layers * (n + 1))
    return grad.view(layers, n + 1)[:, :n].reshape(weight_shape).to(grad_matrices.dtype)


def _transposed_matmul(x: Tensor, weight: Tensor, padding: tuple[int, int]) -> Tensor:
    """Stride-1 transposed conv as one multiply by a row-banded matrix, then a sum over kernel rows.

    Input row i and kernel row r feed output row i + r - pad; within a row, input column j feeds
    output column q through kernel column q + pad - j. So each input row (all its channels) times
    one (c_in, w) x (k_h, c_out, out_w) matrix gives every kernel row's contribution at once, and
    the output is the sum of those contributions shifted by their kernel row. With the input
    flipped along its width, that matrix is a strided view of the kernel padded by w - 1 on both
    sides. Against the full input-to-output matrix this does out_w / (w + k_w - 1) of the work
    with no zero rows (12x12, 11 -> 6 on 10x10: 0.77 against 1.22 GFLOP for 256 images)."""
    batch, c_in, h, w = x.shape
    c_out, k_h, k_w = weight.shape[1:]
    pad_h, pad_w = padding
    out_w = w + k_w - 1 - 2 * pad_w
    padded = F.pad(weight, (w - 1, w - 1)).contiguous()
    s_in, s_out, s_row, s_col = padded.stride()
    band = padded.as_strided((c_in, w, k_h, c_out, out_w), (s_in, s_col, s_row, s_out, s_col),
                             padded.storage_offset() + pad_w * s_col)
    rows = x.flip(3).transpose(1, 2).reshape(batch * h, c_in * w)
    by_kernel_row = (rows @ band.reshape(c_in * w, k_h * c_out * out_w)).view(batch, h, k_h, c_out, out_w)
    full = x.new_zeros(batch, h + k_h - 1, c_out, out_w)
    for r in range(k_h):
        full[:, r:r + h] += by_kernel_row[:, :, r]
    return full[:, pad_h:full.shape[1] - pad_h].permute(0, 2, 1, 3).contiguous()


class _StrideOneConv(torch.autograd.Function):
    """A stride-1 conv or transposed conv whose forward runs as torch's, as a multiply or as the
    direct conv with the flipped kernel, and whose backward is oneDNN's, except that the weight
    gradient can be taken as a convolution with batch and channels swapped (``swap_weight_grad``)
    and a conv's input gradient, itself a transposed conv, as the banded multiply
    (``input_grad_by_rows``)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, padding: tuple[int, int], transposed: bool, plan: str,
                swap_weight_grad: bool, input_grad_by_rows: bool) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.transposed = padding, transposed
        ctx.swap_weight_grad, ctx.input_grad_by_rows = swap_weight_grad, input_grad_by_rows
        if plan == "transposed-matmul":
            return _transposed_matmul(x, weight, padding)
        if plan == "transposed-direct":
            k_h, k_w = weight.shape[2:]
            return F.conv2d(x, weight.flip(2, 3).transpose(0, 1), padding=(k_h - 1 - padding[0], k_w - 1 - padding[1]))
        return (F.conv_transpose2d if transposed else F.conv2d)(x, weight, padding=padding)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        want_x, want_w = ctx.needs_input_grad[:2]
        rows = want_x and ctx.input_grad_by_rows
        swap = want_w and ctx.swap_weight_grad
        grad_x = grad_w = None
        if (want_x and not rows) or (want_w and not swap):
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], list(ctx.padding), [1, 1], ctx.transposed, [0, 0], 1,
                [want_x and not rows, want_w and not swap, False])
        if rows:
            # A conv's (c_out, c_in, k, k) weight read as a transposed conv's (c_in', c_out') one.
            grad_x = _transposed_matmul(grad_out, weight, ctx.padding)
        if swap:
            grad_w = _weight_grad_by_swapped_conv(x, grad_out, ctx.padding, ctx.transposed)
        return grad_x, grad_w, None, None, None, None, None


def _weight_grad_by_swapped_conv(x: Tensor, grad_out: Tensor, padding: tuple[int, int], transposed: bool) -> Tensor:
    """A stride-1 conv's weight gradient, sum over images and positions of the output gradient
    times the shifted input, is itself a stride-1 conv with the same padding once the batch axis
    plays the channels': the input correlated with the output gradient (for a transposed conv,
    the other way round), whose (in, out) axes are the kernel's, transposed."""
    image, kernel = (grad_out, x) if transposed else (x, grad_out)
    swapped = F.conv2d(image.transpose(0, 1).contiguous(), kernel.transpose(0, 1).contiguous(), padding=padding)
    return swapped.transpose(0, 1).contiguous()


def _stored_weight(layer: nn.modules.conv._ConvNd) -> Tensor:
    # A spectral-normalised layer runs a power iteration each time `.weight` is read; choosing
    # the path must not read it, so that a forward reads it exactly once, as torch's does.
    if hasattr(layer, "parametrizations") and "weight" in layer.parametrizations:
        return layer.parametrizations.weight.original
    return layer.weight


def _output_hw(x: Tensor, layer: nn.modules.conv._ConvNd, transposed: bool) -> tuple[int, int]:
    sizes = []
    for i in range(2):
        k, s, p = layer.kernel_size[i], layer.stride[i], layer.padding[i]
        if transposed:
            sizes.append((x.shape[2 + i] - 1) * s - 2 * p + k + layer.output_padding[i])
        else:
            sizes.append((x.shape[2 + i] + 2 * p - k) // s + 1)
    return sizes[0], sizes[1]


def _plan(x: Tensor, layer: nn.modules.conv._ConvNd, transposed: bool, out_channels: int | None = None) -> str:
    """'native', 'small-matmul', 'transposed-matmul', 'transposed-direct' or 'own-backward'
    (module docstring). ``out_channels``: where the weight is not the layer's own but several
    layers' stacked on the output channels (``conv_with_weight``)."""
    if (_native_only or x.device.type != "cpu" or x.dim() != 4 or x.shape[0] == 0
            or torch.is_autocast_enabled("cpu") or x.dtype != _stored_weight(layer).dtype
            or not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
            or layer.groups != 1 or layer.dilation != (1, 1)
            or layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
        return "native"
    out_h, out_w = _output_hw(x, layer, transposed)
    entries = x.shape[1] * x.shape[2] * x.shape[3] * (out_channels or layer.out_channels) * out_h * out_w
    if entries <= SMALL_MATRIX:
        return "small-matmul"
    if not x.is_contiguous():
        return "native"
    stride_one = layer.stride == (1, 1) and all(
        p < min(k, size) for p, k, size in zip(layer.padding, layer.kernel_size, x.shape[2:]))
    if not stride_one:
        return "native"
    avx512 = _cpu_has_avx512()
    few_channels = entries <= FEW_CHANNELS_MATRIX and (layer.out_channels <= FEW_CHANNELS or not avx512)
    narrow_band = not avx512 and _large_kernel(layer) and _band_is_narrow(out_w, layer)
    if transposed and (few_channels or narrow_band):
        return "transposed-matmul"
    if transposed and avx512:
        return "transposed-direct"
    return "own-backward" if _swaps_weight_grad(x, layer, transposed) else "native"


def _band_is_narrow(wide: int, layer: nn.modules.conv._ConvNd) -> bool:
    """Whether the banded multiply (``_transposed_matmul``) onto ``wide`` columns pays on an
    AVX2-only CPU, where oneDNN's transposed conv is slow: its work over the conv's is wide / k_w.
    2 threads, 256 images, 12x12 kernels, against oneDNN's transposed conv: 11 -> 6 onto 19
    columns 25 -> 7.4 ms, 21 -> 11 onto 19 44 -> 32 ms, 16 -> 16 onto 25 149 -> 103 ms, 6 -> 1
    onto 28 12.5 -> 3.2 ms; a 9x9 onto 30 (3.3x the kernel) is 3x slower (16 -> 50 ms)."""
    return wide <= BAND_MAX_WIDTH_PER_KERNEL * layer.kernel_size[1]


def _large_kernel(layer: nn.modules.conv._ConvNd) -> bool:
    return min(layer.kernel_size) >= SWAP_MIN_KERNEL


def _swaps_weight_grad(x: Tensor, layer: nn.modules.conv._ConvNd, transposed: bool) -> bool:
    """Whether a stride-1 layer's weight gradient runs as the swapped conv
    (``_weight_grad_by_swapped_conv``), a correlation whose kernel is the smaller of the layer's
    two maps. On an AVX2-only CPU for kernels of at least ``SWAP_MIN_KERNEL`` (2 threads, 256
    images, against oneDNN's weight gradient: 12x12 1 -> 11 on 28x28 32-34 -> 7 ms, 11 -> 22 on
    19x19 24-36 -> 16-20 ms, transposed 6 -> 1 18 -> 4.4 ms and 11 -> 6 11 -> 7 ms; at 7x7 and 9x9
    between 0.8x and 3.3x, at 3x3 and 5x5 slower). With AVX-512 only where that smaller map is no
    larger than the kernel (2 / 1 threads: 11 -> 21 on 19x19 17.7 -> 12.6 / 32.0 -> 23.1 ms,
    transposed 11 -> 6 on 10x10 7.2 -> 3.9 / 10.6 -> 6.3 ms); on larger maps oneDNN's is faster
    there (1 -> 11 on 28x28 2.1 against 4.3 ms, transposed 6 -> 1 on 19x19 2.1 / 3.9, transposed
    16 -> 16 on 16x16 24 / 33, a 11x11 6 -> 5 on 36x36 19 / 25)."""
    if not _large_kernel(layer):
        return False
    if not _cpu_has_avx512():
        return True
    smaller_map = min(*x.shape[2:], *_output_hw(x, layer, transposed))
    return smaller_map <= min(layer.kernel_size)


@functools.lru_cache(maxsize=1)
def _cpu_has_avx512() -> bool:
    """oneDNN's strengths differ with the vector width. With AVX-512 the direct form of a stride-1
    transposed conv beats the transposed form (11 -> 6 forward 9.8 -> 6.9 ms); on an AVX2-only CPU
    (AMD EPYC, 2 threads, 256 images) it is 2.3x slower than oneDNN's transposed conv (forward +
    backward 123 vs 54 ms), the multiply is faster than both (37 ms), and the swapped weight
    gradient is faster than oneDNN's (``_swaps_weight_grad``)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _run(plan: str, x: Tensor, weight: Tensor, bias: Tensor | None, layer: nn.modules.conv._ConvNd,
         transposed: bool) -> Tensor:
    if plan == "small-matmul":
        output_padding = tuple(layer.output_padding) if transposed else (0, 0)
        in_channels_last = not x.is_contiguous()
        out_channels_last = layer.channels_last_output
        index, out_shape = _layout_index(tuple(weight.shape), transposed, tuple(layer.stride), tuple(layer.padding),
                                         output_padding, tuple(x.shape[2:]), in_channels_last, out_channels_last)
        y = _SmallConvAsMatmul.apply(x, weight, index, out_shape, in_channels_last, out_channels_last)
    else:
        swap = _swaps_weight_grad(x, layer, transposed)
        rows = swap and not transposed and not _cpu_has_avx512() and _band_is_narrow(x.shape[3], layer)
        y = _StrideOneConv.apply(x, weight, tuple(layer.padding), transposed, plan, swap, rows)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def conv_with_weight(layer: nn.Conv2d, x: Tensor, weight: Tensor) -> Tensor:
    """``layer``'s convolution (stride, padding, and its faster path where one applies) with
    another weight of its kernel and input channels, e.g. several layers' weights stacked on the
    output channels: one call for layers that read the same input."""
    return layer._conv_forward(x, weight, None)


def runs_as_small_multiply(layer: nn.Module, x: Tensor) -> bool:
    """Whether ``layer(x)`` would run as the small multiply (``stacked_small_conv`` needs it)."""
    return isinstance(layer, Conv2d) and _plan(x, layer, transposed=False) == "small-matmul"


class _StackedSmallConvAsMatmul(torch.autograd.Function):
    """k layers of one geometry, each on its own input: ``y[i] = x[i] @ M(weights[i])`` as one
    batched multiply, (k, N, in) -> (k, N, out); both gradients by batched multiplies."""

    @staticmethod
    def forward(ctx, x: Tensor, weights: Tensor, index: Tensor) -> Tensor:
        k = weights.shape[0]
        with_zero = torch.cat([weights.reshape(k, -1), weights.new_zeros(k, 1)], dim=1)
        matrices = with_zero.index_select(1, index.view(-1)).view(k, *index.shape)   # (k, in, out)
        ctx.save_for_backward(x, matrices, index)
        ctx.weights_shape = weights.shape
        return torch.bmm(x, matrices)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, matrices, index = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grad_out, matrices.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(index, torch.bmm(x.transpose(1, 2), grad_out), ctx.weights_shape)
        return grad_x, grad_w, None


def stacked_small_conv(layer: nn.Conv2d, x: Tensor, weights: Tensor, in_hw: tuple[int, int],
                       in_channels_last: bool, out_channels_last: bool) -> tuple[Tensor, tuple[int, int, int]]:
    """k convolutions of ``layer``'s geometry at once: ``x`` (k, N, C*H*W) holds each one's
    input flattened ((C, H, W) order, or (H, W, C) with ``in_channels_last``), ``weights`` (k, *
    the layer's weight shape) their weights. Returns (k, N, out features) in the order that
    ``out_channels_last`` names, and the output's (C, H, W). Only for layers that
    ``runs_as_small_multiply``."""
    index, out_shape = _layout_index(tuple(weights.shape[1:]), False, tuple(layer.stride), tuple(layer.padding),
                                     (0, 0), in_hw, in_channels_last, out_channels_last)
    return _StackedSmallConvAsMatmul.apply(x, weights, index), out_shape


def runs_natively(layer: nn.Module, x: Tensor) -> bool:
    """Whether ``layer(x)`` would run through torch's own convolution."""
    if not isinstance(layer, (Conv2d, ConvTranspose2d)):
        return True
    return _plan(x, layer, isinstance(layer, ConvTranspose2d)) == "native"


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict) that runs faster where it can.

    ``channels_last_output``: where the layer runs as a small multiply, its output comes
    channels-last (same values, another memory order); set on convs followed by a BatchNorm,
    whose CPU kernel is 3-4x faster on channels-last 2x2 maps than on NCHW ones."""

    channels_last_output = False

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # Planned by the weight it is given: `conv_with_weight` passes several layers' stacked.
        plan = _plan(input, self, transposed=False, out_channels=weight.shape[0])
        if plan == "native":
            return super()._conv_forward(input, weight, bias)
        return _run(plan, input, weight, bias, self, transposed=False)


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters, same state dict) that runs faster where it can."""

    channels_last_output = False

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        plan = "native" if output_size is not None else _plan(input, self, transposed=True)
        if plan == "native":
            return super().forward(input, output_size)
        return _run(plan, input, self.weight, self.bias, self, transposed=True)
