"""timm-style tests of every registered model family, parametrised over ``timm.list_models``.

Each model is built at its own widths and head counts but shallow (ViR: 2 blocks; QnA-ViT: one
block of each kind per stage; the blocks repeat, so depth changes nothing these tests look at),
on a 64 x 96 input.
"""
import math

import pytest
import timm
import torch
from timm.models._features_fx import create_feature_extractor, get_graph_node_names

import vir_lightning  # noqa: F401  (registers the models)

MODELS = timm.list_models('vir_*') + timm.list_models('qna_vit_*')
SHALLOW = {
    'vir': dict(depth=2),
    'qna': dict(qna_depths=(1, 1, 1, 0), window_depths=(0, 0, 1, 1)),
}
SIZE = (64, 96)


def test_every_family_is_registered():
    assert {'vir_tiny_patch16_224', 'vir_small_patch16_224', 'vir_base_patch16_224', 'vir_large_patch16_224',
            'qna_vit_tiny', 'qna_vit_small', 'qna_vit_base'} <= set(MODELS)


def _family(name):
    return name.split('_')[0]


def _model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=7, **SHALLOW[_family(name)], **kwargs)


def _input(batch=2):
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope='module', params=MODELS)
def model(request):
    return _model(request.param).eval()


def _is_hierarchical(model):
    return hasattr(model, 'stages')


def _features_shape(model):
    """forward_features: ViR [B, tokens + prefix, C]; QnA-ViT the last NHWC map [B, H/32, W/32, C]."""
    if _is_hierarchical(model):
        return (2, math.ceil(SIZE[0] / 32), math.ceil(SIZE[1] / 32), model.num_features)
    patch = model.patch_embed.patch_size
    return (2, (SIZE[0] // patch[0]) * (SIZE[1] // patch[1]) + model.num_prefix_tokens, model.num_features)


def test_forward_backward(model):
    x = _input().requires_grad_()
    model.train()
    try:
        out = model(x)
        assert out.shape == (2, 7) and torch.isfinite(out).all()
        out.square().sum().backward()
    finally:
        model.eval()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    model.zero_grad(set_to_none=True)


def test_forward_features_and_head(model):
    x = _input()
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
        assert torch.allclose(logits, model(x), atol=1e-5)
    assert features.shape == _features_shape(model)
    assert pre_logits.shape == (2, model.num_features) and logits.shape == (2, 7)


@pytest.mark.parametrize('name', [timm.list_models('vir_*')[0], timm.list_models('qna_vit_*')[0]])
def test_reset_classifier(name):
    model = _model(name).eval()
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(_input()).shape == (2, model.num_features)
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(_input()).shape == (2, 3)
    assert model.get_classifier().out_features == 3


@pytest.mark.parametrize('output_fmt', ['NCHW', 'channels_last'])
def test_forward_intermediates(model, output_fmt):
    x = _input()
    if output_fmt == 'channels_last':  # ViR's tokens or QnA-ViT's NHWC maps
        output_fmt = 'NHWC' if _is_hierarchical(model) else 'NLC'
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt=output_fmt)
        assert torch.allclose(final, model.forward_features(x), atol=1e-5)
    if _is_hierarchical(model):
        grids = [(math.ceil(SIZE[0] / r), math.ceil(SIZE[1] / r)) for r in (4, 8, 16, 32)]
        channels = [i['num_chs'] for i in model.feature_info]
    else:
        patch = model.patch_embed.patch_size
        grids = [(SIZE[0] // patch[0], SIZE[1] // patch[1])] * len(model.blocks)
        channels = [model.num_features] * len(model.blocks)
    assert len(intermediates) == len(grids)
    for t, (gh, gw), c in zip(intermediates, grids, channels):
        expected = {'NCHW': (2, c, gh, gw), 'NHWC': (2, gh, gw, c), 'NLC': (2, gh * gw, c)}[output_fmt]
        assert t.shape == expected


def test_features_only_matches_feature_info():
    for name in MODELS:
        model = timm.create_model(name, **SHALLOW[_family(name)], features_only=True, out_indices=(0, 1)).eval()
        with torch.no_grad():
            maps = model(_input())
        assert [tuple(m.shape) for m in maps] == [
            (2, c, SIZE[0] // r, SIZE[1] // r)
            for c, r in zip(model.feature_info.channels(), model.feature_info.reduction())]


def test_qna_features_only_gives_four_maps_at_strides_4_to_32():
    for name in timm.list_models('qna_vit_*'):
        model = timm.create_model(name, **SHALLOW['qna'], features_only=True).eval()
        assert model.feature_info.reduction() == [4, 8, 16, 32]
        with torch.no_grad():
            maps = model(_input(1))
        assert [m.shape[1] for m in maps] == model.feature_info.channels()
        assert [m.shape[-2:] for m in maps] == [(SIZE[0] // r, SIZE[1] // r) for r in (4, 8, 16, 32)]


def test_default_cfg_names_the_state_dict(model):
    cfg = model.pretrained_cfg
    state = model.state_dict()
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state
    assert state[f"{cfg['first_conv']}.weight"].shape[1] == cfg['input_size'][0]
    assert state[f"{cfg['classifier']}.weight"].shape[0] == model.num_classes


def test_no_weight_decay_names_parameters(model):
    names = dict(model.named_parameters())
    exempt = model.no_weight_decay()
    assert exempt and exempt <= set(names)


def test_group_matcher_covers_every_parameter(model):
    from timm.models._manipulate import group_parameters
    groups = group_parameters(model, model.group_matcher(coarse=False))
    grouped = {name for names in groups.values() for name in names}
    assert grouped == {name for name, _ in model.named_parameters()}
    assert len(groups) > 2  # stem, blocks..., final norm


def test_grad_checkpointing_gives_the_same_gradients(model):
    x = _input()
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.set_grad_checkpointing(False)
    model.zero_grad(set_to_none=True)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_fx_traces_through_timms_feature_extractor(model):
    """The way timm's and torchvision's feature extractors trace a model (timm's notrace registrations)."""
    x = _input()
    _, eval_nodes = get_graph_node_names(model)
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]]).eval()
    with torch.no_grad():
        out = next(iter(traced(x).values()))
        assert torch.equal(out, model(x))
        with pytest.raises(ValueError, match='65x96 is not a multiple'):  # the input check survives tracing
            traced(torch.randn(1, 3, 65, 96))


def test_torch_export_and_compile():
    model = _model(MODELS[0], retention_mode='chunkwise', chunk_size=4, direction='bidirectional').eval()
    x = _input()
    with torch.no_grad():
        expected = model(x)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # eager caches untouched by export
        compiled = torch.compile(model, backend='eager', fullgraph=False)
        torch.testing.assert_close(compiled(x), expected, rtol=0, atol=1e-5)
