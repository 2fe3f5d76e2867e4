"""Stand-in for DeepMed-Lab-ECNU/BCP code/networks/VNet.py at 7879f988872f561231f73eecd5b4e232e54fa2bd.

BCP's V-Net as ``net_factory(net_type="VNet", mode="train")`` builds it (batch norm, dropout),
written for tests/test_bcp_recipe.py: the same submodule names (``encoder.block_one`` ...
``decoder.block_nine``, ``decoder.out_conv``), the same layers, and ``forward`` as upstream has
it: ``(out_seg, self.pool(features[4]))``, the logits and a max-pooled encoder bottleneck, *not*
decoder features (upstream's comment ``# 4, 16, 112, 112, 80`` beside it is wrong: at a
112 x 112 x 80 patch the second output is ``(B, 256, 3, 3, 2)``). The decoder's ``x8_up`` is
computed and dropped. The projection and selector heads, which ``forward`` never calls, are
left out.
"""

import torch
from torch import nn


def _conv_block(n_stages, cin, cout):
    """ConvBlock(normalization="batchnorm"): n_stages x (Conv3d 3x3x3, BatchNorm3d, ReLU)."""
    ops = []
    for i in range(n_stages):
        ops += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]
    return _Wrap(nn.Sequential(*ops))


def _resample(cin, cout, up):
    """DownsamplingConvBlock / UpsamplingDeconvBlock: a stride-2 (transposed) conv, BatchNorm3d, ReLU."""
    conv = nn.ConvTranspose3d(cin, cout, 2, stride=2) if up else nn.Conv3d(cin, cout, 2, stride=2)
    return _Wrap(nn.Sequential(conv, nn.BatchNorm3d(cout), nn.ReLU(inplace=True)))


class _Wrap(nn.Module):
    """Upstream's blocks hold their layers as ``self.conv``."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


class Encoder(nn.Module):
    def __init__(self, n_channels=1, n_filters=16, has_dropout=True):
        super().__init__()
        f = n_filters
        self.has_dropout = has_dropout
        self.block_one, self.block_one_dw = _conv_block(1, n_channels, f), _resample(f, 2 * f, up=False)
        self.block_two, self.block_two_dw = _conv_block(2, 2 * f, 2 * f), _resample(2 * f, 4 * f, up=False)
        self.block_three, self.block_three_dw = _conv_block(3, 4 * f, 4 * f), _resample(4 * f, 8 * f, up=False)
        self.block_four, self.block_four_dw = _conv_block(3, 8 * f, 8 * f), _resample(8 * f, 16 * f, up=False)
        self.block_five = _conv_block(3, 16 * f, 16 * f)
        self.dropout = nn.Dropout3d(p=0.5, inplace=False)

    def forward(self, x):
        x1 = self.block_one(x)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        x5 = self.block_five(self.block_four_dw(x4))
        if self.has_dropout:
            x5 = self.dropout(x5)
        return [x1, x2, x3, x4, x5]


class Decoder(nn.Module):
    def __init__(self, n_classes=2, n_filters=16, has_dropout=True):
        super().__init__()
        f = n_filters
        self.has_dropout = has_dropout
        self.block_five_up = _resample(16 * f, 8 * f, up=True)
        self.block_six, self.block_six_up = _conv_block(3, 8 * f, 8 * f), _resample(8 * f, 4 * f, up=True)
        self.block_seven, self.block_seven_up = _conv_block(3, 4 * f, 4 * f), _resample(4 * f, 2 * f, up=True)
        self.block_eight, self.block_eight_up = _conv_block(2, 2 * f, 2 * f), _resample(2 * f, f, up=True)
        self.block_nine = _conv_block(1, f, f)
        self.out_conv = nn.Conv3d(f, n_classes, 1, padding=0)
        self.dropout = nn.Dropout3d(p=0.5, inplace=False)

    def forward(self, features):
        x1, x2, x3, x4, x5 = features
        x6 = self.block_six(self.block_five_up(x5) + x4)
        x7 = self.block_seven(self.block_six_up(x6) + x3)
        x8 = self.block_eight(self.block_seven_up(x7) + x2)
        x8_up = self.block_eight_up(x8) + x1
        x9 = self.block_nine(x8_up)
        if self.has_dropout:
            x9 = self.dropout(x9)
        return self.out_conv(x9), x8_up


class VNet(nn.Module):
    def __init__(self, n_channels=1, n_classes=2, n_filters=16, has_dropout=True):
        super().__init__()
        self.encoder = Encoder(n_channels, n_filters, has_dropout)
        self.decoder = Decoder(n_classes, n_filters, has_dropout)
        self.pool = nn.MaxPool3d(3, stride=2)

    def forward(self, input):
        features = self.encoder(input)
        out_seg, x8_up = self.decoder(features)
        features = self.pool(features[4])
        return out_seg, features
