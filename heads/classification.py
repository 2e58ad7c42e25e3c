"""Classification heads over pooled backbone features [B, C] -> logits [B, num_classes]."""
import torch
import torch.nn as nn


class LinearHead(nn.Sequential):
    """Dropout + linear classifier: the ViT/ViR head."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
        nn.init.trunc_normal_(self[1].weight, std=0.02)
        nn.init.zeros_(self[1].bias)


class MLPHead(nn.Module):
    """A hidden layer with tanh before the classifier (timm's pre-logits, for linear-probe style fine-tuning)."""

    def __init__(self, in_features: int, num_classes: int, hidden_features: int = 0, dropout: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.pre_logits = nn.Sequential(nn.Linear(in_features, hidden_features), nn.Tanh())
        self.classifier = LinearHead(hidden_features, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pre_logits(x))
