"""Classification heads over pooled backbone features [B, C] -> logits [B, num_classes].

'linear' is no module here: it is the backbone's own timm classifier (``timm.create_model(name,
num_classes=K)``, dropout from timm's ``drop_rate``), so a timm checkpoint's head loads into it.
'mlp' puts a tanh hidden layer before the classifier (the pre-logits of the original ViT), as
timm's ``Mlp``.
"""
from typing import Literal

import torch.nn as nn
from timm.layers import Mlp

ClassificationHeadName = Literal['linear', 'mlp']


def mlp_head(in_features: int, num_classes: int, hidden_features: int = 0, dropout: float = 0.0) -> Mlp:
    """Linear -> tanh -> dropout -> linear classifier; ``hidden_features`` 0 means ``in_features``."""
    return Mlp(in_features, hidden_features or in_features, num_classes, act_layer=nn.Tanh, drop=(dropout, 0.0))
