"""AdaViT (vir_lightning/models/adavit.py) on every family it adapts: skipped inference computes what the
masked training forward computes, the analytic cost is torch.utils.flop_counter's, the usage losses and the
straight-through decisions are the paper's."""
import math
import sys

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import vir_lightning  # noqa: F401  (registers the ViR models)
from vir_lightning.models.adavit import (
    ADAPTABLE, AdaptiveVisionTransformer, Decisions, gumbel_sigmoid, usage_loss,
)

SMALL = dict(img_size=24, patch_size=4, embed_dim=32, depth=4, num_heads=4, num_classes=5)
FAMILIES = {  # every backbone family and retention form the wrapper adapts
    'vit': ('vit_tiny_patch16_224', {}),
    'vir_parallel_causal': ('vir_tiny_patch16_224', dict(retention_mode='parallel', init_values=0.5)),
    'vir_recurrent_bidirectional': ('vir_tiny_patch16_224', dict(retention_mode='recurrent',
                                                                 direction='bidirectional', init_values=0.5)),
    'vir_chunkwise_causal': ('vir_tiny_patch16_224', dict(retention_mode='chunkwise', chunk_size=8, init_values=0.5)),
    'vir_chunkwise_bidirectional': ('vir_tiny_patch16_224', dict(retention_mode='chunkwise', chunk_size=8,
                                                                 direction='bidirectional', init_values=0.5)),
}


def _backbone(family: str) -> torch.nn.Module:
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, **SMALL, **kwargs)
    for block in model.blocks:  # flop_counter cannot see timm's fused CPU attention; the unfused one it counts
        if hasattr(block, 'attn'):
            block.attn.fused_attn = False
    return model


def _shake(model: AdaptiveVisionTransformer, seed: int = 0) -> AdaptiveVisionTransformer:
    """Random decision layers, so that each image drops different patches, heads and sub-blocks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for network in model.decisions:
            layer = network.logits
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.5)
            layer.bias.copy_(network.cut + 2.0 * torch.randn(layer.bias.shape, generator=g))
    return model


def _images(batch: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 24, 24, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _kinds(decisions: Decisions):
    return [getattr(decisions, kind) for kind in ADAPTABLE]


@pytest.mark.parametrize('batch', [1, 3])  # a single image's plan is read as Python values, a batch's as tensors
@pytest.mark.parametrize('adapt', [ADAPTABLE, ('patches',), ('heads',), ('blocks',)], ids='+'.join)
@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_skipped_inference_equals_the_masked_forward_on_the_same_decisions(family, adapt, batch):
    model = _shake(AdaptiveVisionTransformer(_backbone(family), adapt=adapt)).double().eval()
    images = _images(batch, torch.float64)
    model.execution = 'mask'
    masked, masked_decisions = model.forward_adaptive(images)
    model.execution = 'skip'
    with torch.no_grad():
        skipped, skipped_decisions = model.forward_adaptive(images)
    for a, b in zip(_kinds(masked_decisions), _kinds(skipped_decisions)):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
    used = masked_decisions.usage()
    assert set(used) == set(adapt)
    assert all(0.05 < float(u.detach()) < 0.95 for u in used.values()), used  # the decisions drop and keep
    if 'patches' in adapt and batch > 1:  # images differ in what they keep, so skipping pads and scatters per image
        per_image = masked_decisions.patches[..., ~masked_decisions.prefix].sum((1, 2))
        assert len(set(per_image.tolist())) > 1
    torch.testing.assert_close(skipped, masked, rtol=0, atol=1e-10)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_intermediate_maps_are_timms_and_skipping_keeps_them(family):
    """What a dense head reads: at "keep everything" the maps of timm's features_only model, and skipped
    heads and blocks give the masked forward's maps."""
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    features = timm.create_model(name, **SMALL, **kwargs, features_only=True, out_indices=(1, 2, 3)).eval()
    model = AdaptiveVisionTransformer(features.model, adapt=('heads', 'blocks')).eval()
    images = _images(2)
    maps, _ = model.forward_intermediates_adaptive(images, features.out_indices)
    for ours, timms in zip(maps, features(images), strict=True):
        torch.testing.assert_close(ours, timms, rtol=1e-5, atol=1e-5)
    _shake(model).double()
    model.execution = 'mask'
    masked, decisions = model.forward_intermediates_adaptive(images.double(), features.out_indices)
    assert 0.05 < float(decisions.usage()['blocks'].detach()) < 0.95
    model.execution = 'skip'
    with torch.no_grad():
        skipped, _ = model.forward_intermediates_adaptive(images.double(), features.out_indices)
    for a, b in zip(skipped, masked, strict=True):
        assert a.shape == (2, SMALL['embed_dim'], 6, 6)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_decisions_start_as_keep_so_the_wrapped_model_is_the_backbone(family):
    backbone = _backbone(family).eval()
    model = AdaptiveVisionTransformer(backbone).eval()
    images = _images(2)
    logits = model(images)
    _, decisions = model.forward_adaptive(images)
    assert all(bool((d == 1).all()) for d in _kinds(decisions))
    torch.testing.assert_close(logits, backbone(images), rtol=1e-5, atol=1e-5)
    model.train()  # in training, the Gumbel noise drops a few (P(keep) = 0.95 at the start)
    torch.manual_seed(0)
    _, decisions = model.forward_adaptive(_images(16))
    assert 0.9 < float(decisions.usage()['heads']) < 0.99


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_the_analytic_cost_is_what_flop_counter_counts(family):
    backbone = _backbone(family).eval()
    model = AdaptiveVisionTransformer(backbone).eval()
    image = _images(1)
    _, decisions = model.forward_adaptive(image)
    full = 2 * float(model.macs(decisions))  # everything kept, plus the decision networks
    assert full == pytest.approx(_flops(lambda: backbone(image)), rel=0.02)

    _shake(model)
    with torch.no_grad():
        _, decisions = model.forward_adaptive(image)
    assert 0.2 < 2 * float(model.macs(decisions)) / full < 0.9
    assert 2 * float(model.macs(decisions)) == _flops(lambda: model(image))  # the skipped forward: exactly


@pytest.mark.parametrize('longest_parallel', [0, 20, 448])  # chunkwise for all, for some blocks' kept tokens, none
def test_the_auto_form_is_counted_as_the_form_each_image_runs(monkeypatch, longest_parallel):
    for module in ('retention', 'adavit'):
        monkeypatch.setattr(sys.modules[f'vir_lightning.models.{module}'], 'AUTO_PARALLEL_MAX_TOKENS', longest_parallel)
    torch.manual_seed(0)
    backbone = timm.create_model('vir_tiny_patch16_224', **SMALL, chunk_size=8, direction='bidirectional').eval()
    model = _shake(AdaptiveVisionTransformer(backbone).eval())
    image = _images(1)
    with torch.no_grad():
        _, decisions = model.forward_adaptive(image)
    assert 2 * float(model.macs(decisions)) == _flops(lambda: model(image))


def test_usage_loss_is_the_papers_on_hand_computed_decisions():
    prefix = torch.tensor([False, False, False, True])
    patches = torch.tensor([[[1., 0., 0., 1.], [1., 1., 0., 1.]]])  # kept patches 1/3, 2/3: mean 0.5
    heads = torch.tensor([[[1., 0.], [0., 0.]]])  # 0.25
    blocks = torch.tensor([[[1., 1.], [1., 0.]]])  # 0.75
    decisions = Decisions(patches, heads, blocks, prefix)
    used = decisions.usage()
    assert {k: float(v) for k, v in used.items()} == pytest.approx({'patches': 0.5, 'heads': 0.25, 'blocks': 0.75})
    targets = {'patches': 0.3, 'heads': 0.5, 'blocks': 0.5}
    weights = {'patches': 2.0, 'heads': 2.0, 'blocks': 1.0}
    expected = 2 * (0.5 - 0.3) ** 2 + 2 * abs(0.25 - 0.5) + 1 * abs(0.75 - 0.5)
    assert float(usage_loss(decisions, targets, weights)) == pytest.approx(expected)
    only_heads = Decisions(None, heads, None, prefix)
    assert float(usage_loss(only_heads, targets, weights)) == pytest.approx(0.5)


def test_gumbel_sigmoid_is_hard_forward_and_soft_backward():
    logits = torch.linspace(-20, 20, 101, requires_grad=True)
    tau, threshold = 5.0, 0.6
    cut = tau * math.log(threshold / (1 - threshold))  # sigmoid(logit / tau) > threshold
    hard = gumbel_sigmoid(logits, tau, cut, noise=False)
    assert set(hard.tolist()) == {0.0, 1.0}  # exactly, not 1 + rounding
    assert torch.equal(hard.bool(), torch.sigmoid(logits.detach() / tau) > threshold)
    hard.sum().backward()
    soft = torch.sigmoid(logits.detach() / tau)
    torch.testing.assert_close(logits.grad, soft * (1 - soft) / tau)
    torch.manual_seed(0)
    noisy = torch.stack([gumbel_sigmoid(torch.zeros(1000), tau, 0.0, noise=True) for _ in range(4)])
    assert 0.45 < float(noisy.mean()) < 0.55 and not torch.equal(noisy[0], noisy[1])  # logistic noise, P = 1/2


def test_training_decisions_follow_the_usage_loss():
    """With only the usage loss, the kept fractions fall from ~0.95 toward the targets."""
    torch.manual_seed(0)
    model = AdaptiveVisionTransformer(_backbone('vir_chunkwise_causal')).train()
    optimizer = torch.optim.AdamW(model.decisions.parameters(), lr=0.2)
    targets = dict.fromkeys(ADAPTABLE, 0.3)
    weights = dict.fromkeys(ADAPTABLE, 2.0)
    losses, usages = [], []
    for step in range(30):
        _, decisions = model.forward_adaptive(_images(8, seed=step))
        loss = usage_loss(decisions, targets, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
        usages.append({k: float(v) for k, v in decisions.usage().items()})
    assert sum(losses[-5:]) < 0.3 * sum(losses[:5])
    assert all(usages[-1][k] < 0.6 for k in ADAPTABLE), usages[-1]


@pytest.mark.parametrize('build,needle', [
    (lambda: AdaptiveVisionTransformer(timm.create_model('resnet18', num_classes=3)), 'AdaViT adapts ViR'),
    (lambda: AdaptiveVisionTransformer(timm.create_model('qna_vit_tiny', num_classes=3)), 'VisionTransformer'),
    (lambda: AdaptiveVisionTransformer(_backbone('vit'), tau=0), 'tau must be > 0'),
    (lambda: AdaptiveVisionTransformer(_backbone('vit'), adapt=('tokens',)), "unknown AdaViT decision 'tokens'"),
    (lambda: AdaptiveVisionTransformer(_backbone('vit'), patch_threshold=1.5), 'patch_threshold must be in (0, 1)'),
    (lambda: AdaptiveVisionTransformer(timm.create_model('vit_tiny_patch16_224', class_token=False,
                                                         global_pool='avg', **SMALL)), 'class_token=True'),
])
def test_what_cannot_be_adapted_is_named(build, needle):
    with pytest.raises(ValueError, match=needle.replace('(', r'\(').replace(')', r'\)')):
        build()
