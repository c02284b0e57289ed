"""Zoo models that exercise the unusual paths: functional convs in every call form (OctConv), a model torch.fx
cannot trace (ENet: ``torch.zeros(*sizes)`` and max-unpooling), and a model that only runs at the input size it
declares (a fixed-size classifier, for ``inspect``'s hint).

Example:
    >>> ENetLike()(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 4, 16, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convslim.models.blocks import Head, conv_bn


class OctConv(nn.Module):
    """Octave convolution (Chen et al. 2019) written with ``F.conv2d`` on parameters, in every call form PyTorch
    accepts: positional, keyword ``weight=``/``input=``, stride/padding/dilation/groups by keyword or position,
    ``bias=None``, ``padding='same'``, ``torch.conv2d``, and one conv whose weight is computed at run time."""

    def __init__(self, high: int = 8, low: int = 8):
        super().__init__()

        def weight(m, c, k=3):
            return nn.Parameter(torch.randn(m, c, k, k) * (2.0 / (c * k * k)) ** 0.5)

        self.stem = conv_bn(3, high + low)
        self.high, self.low = high, low
        self.w_hh, self.w_lh, self.w_ll = weight(high, high), weight(high, low), weight(low, low)
        self.w_hl = weight(low, high // 2)  # groups=2
        self.b_ll, self.b_hl = nn.Parameter(torch.zeros(low)), nn.Parameter(torch.randn(low) * 0.1)
        self.w_out = weight(16, high, 1)
        self.w_gate = weight(high, high, 1)
        self.head = Head(16)

    def forward(self, x):
        x = self.stem(x)
        x_h, x_l = x[:, : self.high], F.avg_pool2d(x[:, self.high :], 2)
        hh = F.conv2d(x_h, self.w_hh, None, 1, 1)  # positional, bias None
        lh = F.conv2d(x_l, weight=self.w_lh, padding=1)  # keyword weight
        ll = F.conv2d(
            input=x_l, weight=self.w_ll, bias=self.b_ll, stride=1, padding=(1, 1), dilation=1, groups=1
        )
        hl = F.conv2d(F.avg_pool2d(x_h, 2), self.w_hl, self.b_hl, 1, "same", 1, 2)  # all positional, groups=2
        y_h = F.relu(hh + F.interpolate(lh, scale_factor=2.0, mode="nearest"))
        y_l = F.relu(ll + hl)
        y_h = y_h * torch.sigmoid(torch.conv2d(y_h, self.w_gate * 0.5))  # computed weight: not rewritable
        y = torch.conv2d(y_h + F.interpolate(y_l, scale_factor=2.0), self.w_out, stride=(1, 1), padding=0)
        return self.head(y)


class ENetLike(nn.Module):
    """ENet (Paszke et al. 2016) in miniature: initial block (conv ‖ max pool), a downsampling bottleneck whose
    main branch keeps the pooling indices and is zero-padded with ``torch.zeros(*sizes)`` (torch.fx cannot trace
    that), asymmetric 5x1/1x5 and dilated bottlenecks, PReLU, and an upsampling bottleneck that max-unpools with
    the saved indices beside a transposed conv."""

    def __init__(self):
        super().__init__()
        self.initial = nn.Conv2d(3, 13, 3, stride=2, padding=1, bias=False)
        self.bn0, self.act0 = nn.BatchNorm2d(16), nn.PReLU(16)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.down = nn.Sequential(
            conv_bn(16, 8, 2, stride=2, act=nn.PReLU),
            conv_bn(8, 8, act=nn.PReLU),
            conv_bn(8, 32, 1, act=None),
        )
        self.drop = nn.Dropout2d(0.1)
        self.asym = nn.Sequential(
            conv_bn(32, 8, 1, act=nn.PReLU),
            conv_bn(8, 8, (5, 1), act=None),
            conv_bn(8, 8, (1, 5), act=nn.PReLU),
            conv_bn(8, 32, 1, act=None),
        )
        self.dilated = conv_bn(32, 32, dilation=2, act=nn.PReLU)
        self.up_main = conv_bn(32, 16, 1, act=None)
        self.unpool = nn.MaxUnpool2d(2)
        self.up_reduce = conv_bn(32, 8, 1, act=nn.PReLU)
        self.up_t = nn.ConvTranspose2d(8, 8, 2, stride=2, bias=False)
        self.up_expand = conv_bn(8, 16, 1, act=None)
        self.full = nn.ConvTranspose2d(16, 4, 2, stride=2)

    def forward(self, x):
        x = self.act0(self.bn0(torch.cat([self.initial(x), F.max_pool2d(x, 3, 2, 1)], dim=1)))
        stage_size = x.size()  # as ENet does: the unpooling restores this size, batch included
        main, indices = self.pool(x)
        n, c, h, w = main.size()
        sizes = (n, 32 - c, h, w)
        main = torch.cat([main, torch.zeros(*sizes, dtype=main.dtype, device=main.device)], dim=1)
        x = F.relu(main + self.drop(self.down(x)))
        x = F.relu(x + self.asym(x))
        x = x + self.dilated(x)
        main = self.unpool(self.up_main(x), indices, output_size=stage_size)
        ext = self.up_expand(F.relu(self.up_t(self.up_reduce(x))))
        return self.full(F.relu(main + ext))


class FixedSize(nn.Module):
    """A classifier whose fc takes the flattened 8x8 map, so it runs at 32x32 inputs only; it says so in
    ``input_size`` (as timm and many model zoos do)."""

    input_size = (3, 32, 32)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, stride=2), conv_bn(8, 16, stride=2))
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


SPECIAL_ZOO = {
    "octconv": (OctConv, (1, 3, 16, 16)),
    "enet": (ENetLike, (1, 3, 32, 32)),
    "fixed_size": (FixedSize, (1, 3, 32, 32)),
}
