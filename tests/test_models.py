"""timm-style tests of every registered model family, parametrised over ``timm.list_models``.

Each model is built at its own width and head count but only 2 blocks deep (the blocks are
identical, so depth changes nothing these tests look at), on a 64 x 96 input.
"""
import pytest
import timm
import torch
from timm.models._features_fx import create_feature_extractor, get_graph_node_names

import vir_lightning  # noqa: F401  (registers the models)

MODELS = timm.list_models('vir_*')
DEPTH = 2
SIZE = (64, 96)


def test_every_family_is_registered():
    assert {'vir_tiny_patch16_224', 'vir_small_patch16_224', 'vir_base_patch16_224', 'vir_large_patch16_224'} \
        <= set(MODELS)


def _model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, depth=DEPTH, num_classes=7, **kwargs)


def _input(batch=2):
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope='module', params=MODELS)
def model(request):
    return _model(request.param).eval()


def _tokens(model):
    patch = model.patch_embed.patch_size
    return (SIZE[0] // patch[0]) * (SIZE[1] // patch[1])


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
    assert features.shape == (2, _tokens(model) + model.num_prefix_tokens, model.num_features)
    assert pre_logits.shape == (2, model.num_features) and logits.shape == (2, 7)


def test_reset_classifier():
    model = _model(MODELS[0]).eval()
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(_input()).shape == (2, model.num_features)
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(_input()).shape == (2, 3)
    assert model.get_classifier().out_features == 3


@pytest.mark.parametrize('output_fmt', ['NCHW', 'NLC'])
def test_forward_intermediates(model, output_fmt):
    x = _input()
    grid = (SIZE[0] // model.patch_embed.patch_size[0], SIZE[1] // model.patch_embed.patch_size[1])
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt=output_fmt)
        assert torch.allclose(final, model.forward_features(x), atol=1e-5)
    assert len(intermediates) == DEPTH
    expected = (2, model.num_features, *grid) if output_fmt == 'NCHW' else (2, grid[0] * grid[1], model.num_features)
    assert all(t.shape == expected for t in intermediates)


def test_features_only_matches_feature_info():
    for name in MODELS:
        model = timm.create_model(name, depth=DEPTH, features_only=True, out_indices=(0, 1)).eval()
        with torch.no_grad():
            maps = model(_input())
        patch = model.feature_info.reduction()
        assert [tuple(m.shape) for m in maps] == [
            (2, c, SIZE[0] // r, SIZE[1] // r) for c, r in zip(model.feature_info.channels(), patch)]


def test_default_cfg_names_the_state_dict(model):
    cfg = model.pretrained_cfg
    state = model.state_dict()
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state
    assert state[f"{cfg['first_conv']}.weight"].shape[1] == cfg['input_size'][0]
    assert state[f"{cfg['classifier']}.weight"].shape[0] == model.num_classes


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
