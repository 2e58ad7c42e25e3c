"""Tests of the ViR timm models in ``vir_lightning/models/vir.py``."""
import copy

import pytest
import timm
import timm.optim
import torch
import torch.nn.functional as F
from timm.models import group_parameters

import vir_lightning  # noqa: F401  (registers the models in timm)
from vir_lightning.models import vir as vir_module
from vir_lightning.models.retention import decay_schedule

TINY = 'vir_tiny_patch16_224'
DIRECTIONS = ('causal', 'bidirectional')


def _perturbed_state():
    """Tiny weights with non-trivial residual branches (LayerScale 1.0) and every parameter perturbed."""
    torch.manual_seed(0)
    model = timm.create_model(TINY, num_classes=10, init_values=1.0)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model.state_dict()


@pytest.fixture(scope='module')
def tiny_state():
    return _perturbed_state()


def _build(state, **kwargs):
    model = timm.create_model(TINY, num_classes=10, init_values=1.0, **kwargs)
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope='module')
def tiny(tiny_state):
    """Shared causal Tiny model (auto form: parallel at 224 px); tests that change it must deep-copy it first."""
    return _build(tiny_state)


def _image(*size, batch=1, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# registry and sizes


def test_models_registered():
    names = set(timm.list_models('vir_*'))
    assert {'vir_tiny_patch16_224', 'vir_small_patch16_224', 'vir_base_patch16_224',
            'vir_large_patch16_224'} <= names


@pytest.mark.parametrize('name,millions,width,depth,heads', [
    ('vir_tiny_patch16_224', 5.7, 192, 12, 3),
    ('vir_small_patch16_224', 22, 384, 12, 6),
    ('vir_base_patch16_224', 87, 768, 12, 12),
    ('vir_large_patch16_224', 304, 1024, 24, 16),
])
def test_parameter_counts(name, millions, width, depth, heads):
    with torch.device('meta'):
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(millions, rel=0.02)
    assert model.embed_dim == width and len(model.blocks) == depth
    assert model.blocks[0].retention.num_heads == heads


# ----------------------------------------------------------------------------------------------
# THE KEY TEST: parallel, recurrent and chunkwise forms agree on outputs and input gradients


def _out_and_grad(model, x, mode, chunk_size):
    model.set_retention_mode(mode, chunk_size)
    assert model.retention_mode == mode
    assert all(b.retention.mode == mode for b in model.blocks)
    if chunk_size is not None:
        assert all(b.retention.chunk_size == chunk_size for b in model.blocks)
    x = x.clone().requires_grad_(True)
    out = model(x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    return out.detach(), x.grad.detach()


@pytest.mark.parametrize('size', [(224, 224), (224, 320)], ids=['224x224', '224x320'])
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-4), (torch.float64, 1e-9)], ids=['f32', 'f64'])
@pytest.mark.parametrize('direction', DIRECTIONS)
def test_retention_forms_agree(tiny_state, direction, dtype, tol, size):
    model = _build(tiny_state, direction=direction).to(dtype)
    assert all(b.retention.direction == direction for b in model.blocks)
    x = _image(*size, dtype=dtype, seed=1)
    ref_out, ref_grad = _out_and_grad(model, x, 'parallel', None)
    assert ref_out.shape == (1, 10) and ref_out.dtype == dtype
    # non-trivial outputs and gradients, so that a max-abs bound is meaningful
    assert ref_out.abs().max() > 0.1 and ref_grad.abs().max() > 1e-3
    num_tokens = (size[0] // 16) * (size[1] // 16) + 1
    for mode, chunk_size in [('recurrent', None), ('chunkwise', 64), ('chunkwise', 50)]:
        if chunk_size:
            assert num_tokens % chunk_size  # the last chunk is a short one
        out, grad = _out_and_grad(model, x, mode, chunk_size)
        assert (out - ref_out).abs().max().item() <= tol, (mode, chunk_size)
        assert (grad - ref_grad).abs().max().item() <= tol, (mode, chunk_size)


@pytest.mark.parametrize('direction', DIRECTIONS)
def test_inference_without_autograd_gives_the_training_forwards_numbers(tiny_state, monkeypatch, direction):
    """The lean inference path (MLP in token slices, states scanned in place) changes no output: checked with
    slices of 50 tokens, in float64, against the same model's forward with autograd on."""
    monkeypatch.setattr(vir_module, 'MLP_TOKENS_AT_ONCE', 50)
    model = _build(tiny_state, direction=direction, retention_mode='chunkwise', chunk_size=64).double()
    x = _image(224, 320, dtype=torch.float64)
    with torch.no_grad():
        lean = model(x)
    torch.testing.assert_close(lean, model(x).detach(), rtol=1e-12, atol=1e-12)


def test_directions_give_different_models(tiny_state):
    """Guard for the test above: the direction really changes the function."""
    x = _image(224, 224)
    with torch.no_grad():
        causal = _build(tiny_state, direction='causal')(x)
        bidir = _build(tiny_state, direction='bidirectional')(x)
    assert (causal - bidir).abs().max() > 1e-2


def test_create_model_in_chunkwise_mode(tiny_state, tiny):
    model = timm.create_model(TINY, num_classes=10, init_values=1.0, retention_mode='chunkwise', chunk_size=50)
    assert model.retention_mode == 'chunkwise'
    assert all(b.retention.mode == 'chunkwise' and b.retention.chunk_size == 50 for b in model.blocks)
    model.load_state_dict(tiny_state)
    model.eval()
    x = _image(224, 224)
    with torch.no_grad():
        assert (model(x) - tiny(x)).abs().max() <= 1e-4


def test_set_retention_mode_keeps_state_dict(tiny_state):
    model = _build(tiny_state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for mode, chunk in [('recurrent', None), ('chunkwise', 50), ('parallel', None)]:
        model.set_retention_mode(mode, chunk)
        after = model.state_dict()
        assert list(after) == list(before)
        assert all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(ValueError, match='softmax'):
        model.set_retention_mode('softmax')
    with pytest.raises(ValueError, match='chunk_size'):
        model.set_retention_mode('chunkwise', 0)


# ----------------------------------------------------------------------------------------------
# causality of the whole model (the released code's softmax-after-mask defect broke it)


@pytest.mark.parametrize('mode,chunk_size', [('parallel', None), ('chunkwise', 50)])
def test_causal_model_patch0_ignores_future_patches(tiny_state, mode, chunk_size):
    x = _image(224, 224, seed=2)
    x2 = x.clone()
    x2[..., -16:, -16:] += 1.0  # the bottom-right patch, the last in raster order
    feats = {}
    for direction in DIRECTIONS:
        model = _build(tiny_state, direction=direction)
        model.set_retention_mode(mode, chunk_size)
        with torch.no_grad():
            a = model.forward_intermediates(x, output_fmt='NLC', intermediates_only=True, return_prefix_tokens=True)
            b = model.forward_intermediates(x2, output_fmt='NLC', intermediates_only=True, return_prefix_tokens=True)
        feats[direction] = (a, b)

    a, b = feats['causal']
    assert len(a) == 12
    for (pa, ca), (pb, cb) in zip(a, b):
        assert torch.equal(pa[:, 0], pb[:, 0])  # patch 0
        assert torch.equal(pa[:, :-1], pb[:, :-1])  # in fact every patch before the perturbed one
        assert (pa[:, -1] - pb[:, -1]).abs().max() > 1e-3
        assert (ca - cb).abs().max() > 1e-4  # the class token (last) reads every patch
    a, b = feats['bidirectional']
    assert (a[-1][0][:, 0] - b[-1][0][:, 0]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# input sizes


def test_any_multiple_of_patch_size(tiny):
    with torch.no_grad():
        logits = tiny(_image(160, 96, batch=2))
        feats = tiny.forward_features(_image(160, 96))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert feats.shape == (1, 10 * 6 + 1, 192)


def test_size_not_multiple_raises(tiny):
    with pytest.raises(ValueError) as info:
        tiny(_image(225, 224))
    msg = str(info.value)
    assert '225x224' in msg and '16x16' in msg


def test_dynamic_img_pad(tiny_state):
    model = _build(tiny_state, dynamic_img_pad=True)
    with torch.no_grad():
        logits = model(_image(225, 224))
        feats = model.forward_features(_image(225, 224))
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()
    assert feats.shape == (1, 15 * 14 + 1, 192)


def test_wrong_channel_count_raises(tiny):
    with pytest.raises(ValueError) as info:
        tiny(torch.randn(1, 1, 224, 224))
    msg = str(info.value)
    assert '3' in msg and '[1, 1, 224, 224]' in msg
    with pytest.raises(ValueError):
        tiny(torch.randn(3, 224, 224))  # missing batch dimension


# ----------------------------------------------------------------------------------------------
# position-embedding cache


def test_pos_embed_cache(tiny_state):
    model = _build(tiny_state)
    x = _image(320, 320, seed=3)
    with torch.no_grad():
        y1 = model(x)
        cached = model._resampled_pos_embed((20, 20))
        y2 = model(x)
        assert model._resampled_pos_embed((20, 20)) is cached
        assert len(model._pos_embed_cache) == 1
        assert cached.shape == (1, 400, 192)
    assert torch.equal(y1, y2)
    # the uncached (grad-enabled) path computes the same numbers
    torch.testing.assert_close(model(x).detach(), y1, rtol=0, atol=1e-6)
    # native grid: no resampling, the parameter itself
    assert model._resampled_pos_embed((14, 14)) is model.pos_embed

    # In-place change. (A constant shift, e.g. add_(1), is removed by the LayerNorms and barely
    # changes the output, so use a non-uniform change.)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.pos_embed.add_(0.5 * torch.randn(model.pos_embed.shape, generator=g))
        y3 = model(x)
        assert model._resampled_pos_embed((20, 20)) is not cached
        assert len(model._pos_embed_cache) == 1
    assert (y3 - y1).abs().max() > 1e-2
    torch.testing.assert_close(model(x).detach(), y3, rtol=0, atol=1e-6)

    # load_state_dict (copy_ under no_grad) also invalidates it
    model.load_state_dict(tiny_state)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y1, rtol=0, atol=1e-6)


def test_pos_embed_cache_refreshes_on_mode_switch_after_data_writes(tiny_state):
    """Writes through .data bypass the version counter; model.eval() (documented) drops the cache."""
    model = _build(tiny_state)
    x = _image(320, 320, seed=3)
    with torch.no_grad():
        y1 = model(x)
        model.pos_embed.data.add_(0.5 * torch.randn_like(model.pos_embed))  # e.g. a hand-written EMA update
        model.eval()
        y2 = model(x)
    assert (y2 - y1).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------
# timm model API


def test_forward_features_and_head(tiny):
    x = _image(224, 224, batch=2)
    with torch.no_grad():
        feats = tiny.forward_features(x)
        pre = tiny.forward_head(feats, pre_logits=True)
        logits = tiny(x)
    assert feats.shape == (2, 197, 192)
    assert pre.shape == (2, 192)
    assert torch.equal(pre, feats[:, -1])  # the class token is the LAST token
    torch.testing.assert_close(logits, tiny.head(pre))
    assert tiny.get_classifier() is tiny.head


def test_reset_classifier(tiny):
    model = copy.deepcopy(tiny)
    model.reset_classifier(5)
    assert model.num_classes == 5
    with torch.no_grad():
        assert model(_image(224, 224, batch=2)).shape == (2, 5)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(_image(224, 224)).shape == (1, 192)


def test_no_weight_decay(tiny):
    nwd = tiny.no_weight_decay()
    names = dict(tiny.named_parameters())
    assert nwd == {'pos_embed', 'cls_token'}
    assert nwd <= set(names)


def test_group_matcher_layer_decay(tiny):
    depth = len(tiny.blocks)
    groups = group_parameters(tiny, tiny.group_matcher())
    assert len(groups) == depth + 2
    layer_of = group_parameters(tiny, tiny.group_matcher(), reverse=True)
    assert set(layer_of) == {n for n, _ in tiny.named_parameters()}
    assert layer_of['pos_embed'] == layer_of['cls_token'] == layer_of['patch_embed.proj.weight'] == 0
    for i in range(depth):
        assert layer_of[f'blocks.{i}.retention.qkv.weight'] == i + 1
        assert layer_of[f'blocks.{i}.retention.norm_weight'] == i + 1
        assert layer_of[f'blocks.{i}.ls2.gamma'] == i + 1
    assert layer_of['head.weight'] == depth + 1
    # the same layer assignment as timm's ViT for every shared parameter (final norm joins the last block)
    vit = timm.create_model('vit_tiny_patch16_224', num_classes=10)
    vit_layer_of = group_parameters(vit, vit.group_matcher(), reverse=True)
    for name, layer in vit_layer_of.items():
        assert layer_of[name.replace('.attn.', '.retention.')] == layer, name

    param_groups = timm.optim.param_groups_layer_decay(tiny, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({g['lr_scale'] for g in param_groups})
    assert len(scales) == depth + 2
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.75 ** (depth + 1))
    assert sum(len(g['params']) for g in param_groups) == len(list(tiny.parameters()))


def test_grad_checkpointing(tiny):
    model = copy.deepcopy(tiny)
    x = _image(96, 96, batch=2, seed=4)

    # count block executions (forward hooks do not fire during checkpoint recomputation, so wrap
    # the MLP's forward instead)
    calls = []
    for block in model.blocks:
        def counted(x, _forward=block.mlp.forward):
            calls.append(1)
            return _forward(x)
        block.mlp.forward = counted

    def run():
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        out.square().sum().backward()
        return out.detach(), xi.grad, {n: p.grad.clone() for n, p in model.named_parameters()}

    out1, gx1, gp1 = run()
    assert len(calls) == 12
    calls.clear()
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    out2, gx2, gp2 = run()
    assert len(calls) == 24  # every block ran twice: forward and recomputation in backward
    torch.testing.assert_close(out2, out1, rtol=0, atol=1e-6)
    torch.testing.assert_close(gx2, gx1, rtol=0, atol=1e-6)
    for n in gp1:
        torch.testing.assert_close(gp2[n], gp1[n], rtol=0, atol=1e-6, msg=n)


@pytest.fixture(scope='module')
def intermediates_case(tiny):
    x = _image(224, 320, batch=2, seed=6)
    with torch.no_grad():
        feats = tiny.forward_features(x)
    return x, feats


def test_forward_intermediates_formats(tiny, intermediates_case):
    x, feats = intermediates_case
    with torch.no_grad():
        final, nchw = tiny.forward_intermediates(x, indices=[3, 5, 7, 11], output_fmt='NCHW')
        final2, nlc = tiny.forward_intermediates(x, indices=[3, 5, 7, 11], output_fmt='NLC')
    torch.testing.assert_close(final, feats, rtol=0, atol=1e-6)
    torch.testing.assert_close(final2, feats, rtol=0, atol=1e-6)
    assert len(nchw) == len(nlc) == 4
    for a, b in zip(nchw, nlc):
        assert a.shape == (2, 192, 14, 20)
        assert b.shape == (2, 280, 192)
        assert torch.equal(a.flatten(2).transpose(1, 2), b)
    # different blocks give different features
    assert (nlc[0] - nlc[1]).abs().max() > 1e-2
    with pytest.raises(ValueError):
        tiny.forward_intermediates(x, indices=[3], output_fmt='NHWC')


def test_forward_intermediates_norm_and_prefix(tiny, intermediates_case):
    x, feats = intermediates_case
    with torch.no_grad():
        _, normed = tiny.forward_intermediates(x, indices=[11], output_fmt='NLC', norm=True)
        _, raw = tiny.forward_intermediates(x, indices=[11], output_fmt='NLC', norm=False)
        _, with_prefix = tiny.forward_intermediates(
            x, indices=[5, 11], output_fmt='NLC', norm=True, return_prefix_tokens=True)
    # block 11 normed == forward_features without the class token
    torch.testing.assert_close(normed[0], feats[:, :280], rtol=0, atol=1e-6)
    assert (raw[0] - normed[0]).abs().max() > 1e-2
    assert len(with_prefix) == 2
    spatial, prefix = with_prefix[1]
    assert spatial.shape == (2, 280, 192) and prefix.shape == (2, 1, 192)
    torch.testing.assert_close(prefix, feats[:, -1:], rtol=0, atol=1e-6)


def test_forward_intermediates_int_only_and_stop_early(tiny, intermediates_case):
    x, _ = intermediates_case
    with torch.no_grad():
        _, by_list = tiny.forward_intermediates(x, indices=[9, 10, 11])
        by_int = tiny.forward_intermediates(x, indices=3, intermediates_only=True)
        _, all_blocks = tiny.forward_intermediates(x)
    assert isinstance(by_int, list) and len(by_int) == 3
    assert all(torch.equal(a, b) for a, b in zip(by_int, by_list))
    assert len(all_blocks) == 12

    calls = []
    model = copy.deepcopy(tiny)
    for block in model.blocks:
        block.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        early = model.forward_intermediates(x, indices=[3, 5], stop_early=True, intermediates_only=True)
    assert len(calls) == 6  # blocks 0..5 only
    assert len(early) == 2
    assert torch.equal(early[0], all_blocks[3]) and torch.equal(early[1], all_blocks[5])


def test_features_only(tiny_state):
    model = timm.create_model(TINY, features_only=True, out_indices=(3, 5, 7, 11), init_values=1.0)
    assert model.feature_info.channels() == [192] * 4
    assert model.feature_info.reduction() == [16] * 4
    model.eval()
    with torch.no_grad():
        maps = model(_image(224, 320, batch=2))
    assert isinstance(maps, (list, tuple)) and len(maps) == 4
    for m in maps:
        assert m.shape == (2, 192, 224 // 16, 320 // 16)
    assert (maps[0] - maps[3]).abs().max() > 1e-2


def test_avg_pool_without_class_token():
    model = timm.create_model(TINY, num_classes=7, class_token=False, global_pool='avg').eval()
    assert model.cls_token is None and model.num_prefix_tokens == 0
    x = _image(96, 128, batch=2)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model(x)
        inter = model.forward_intermediates(x, indices=[11], return_prefix_tokens=True, intermediates_only=True)
    assert feats.shape == (2, 6 * 8, 192)
    torch.testing.assert_close(pre, feats.mean(1))
    assert logits.shape == (2, 7)
    assert inter[0].shape == (2, 192, 6, 8)
    assert 'cls_token' not in dict(model.named_parameters())


def test_token_pool_needs_class_token():
    with pytest.raises(ValueError, match='class_token'):
        timm.create_model(TINY, class_token=False, global_pool='token')
    with pytest.raises(ValueError):
        timm.create_model(TINY, global_pool='max')
    model = timm.create_model(TINY, class_token=False, global_pool='avg')
    with pytest.raises(ValueError, match='class_token'):
        model.reset_classifier(5, 'token')


# ----------------------------------------------------------------------------------------------
# loading timm ViT (and ViR) checkpoints


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope='module')
def vit_ckpt(tmp_path_factory):
    # perturbed, so that LayerNorm weights are not just ones and biases not just zeros
    vit = _perturb(timm.create_model('vit_tiny_patch16_224', num_classes=10), seed=21)
    path = tmp_path_factory.mktemp('ckpt') / 'vit_tiny.pth'
    torch.save(vit.state_dict(), path)
    return vit, path


def _assert_trunk_from_vit(vir, vit):
    eq = torch.equal
    assert eq(vir.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    assert eq(vir.patch_embed.proj.bias, vit.patch_embed.proj.bias)
    assert eq(vir.cls_token, vit.cls_token)
    assert eq(vir.pos_embed, vit.pos_embed[:, 1:])  # ViR has no position for its class token
    assert eq(vir.norm.weight, vit.norm.weight) and eq(vir.norm.bias, vit.norm.bias)
    for rb, vb in zip(vir.blocks, vit.blocks):
        for name in ('qkv', 'proj'):
            assert eq(getattr(rb.retention, name).weight, getattr(vb.attn, name).weight)
            assert eq(getattr(rb.retention, name).bias, getattr(vb.attn, name).bias)
        for name in ('norm1', 'norm2', 'mlp.fc1', 'mlp.fc2'):
            r, v = rb.get_submodule(name), vb.get_submodule(name)
            assert eq(r.weight, v.weight) and eq(r.bias, v.bias)
        # ViT has no LayerScale: gamma 1.0 is the same function
        assert torch.all(rb.ls1.gamma == 1.0) and torch.all(rb.ls2.gamma == 1.0)
        # retention head norm: no ViT counterpart, identity
        assert torch.all(rb.retention.norm_weight == 1.0) and torch.all(rb.retention.norm_bias == 0.0)


def test_load_vit_checkpoint(vit_ckpt):
    vit, path = vit_ckpt
    # The default pretrained_cfg declares 1000 classes; timm only keeps a checkpoint's head when
    # the model's num_classes equals the cfg's, so the 10-class checkpoint is declared in the overlay.
    vir = timm.create_model(TINY, pretrained=True, num_classes=10,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    _assert_trunk_from_vit(vir, vit)
    assert torch.equal(vir.head.weight, vit.head.weight) and torch.equal(vir.head.bias, vit.head.bias)
    with torch.no_grad():
        assert torch.isfinite(vir.eval()(_image(224, 224))).all()


def test_load_vit_checkpoint_file_only_overlay(vit_ckpt):
    vit, path = vit_ckpt
    vir = timm.create_model(TINY, pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_trunk_from_vit(vir, vit)
    assert vir.head.weight.shape == (10, 192)


def test_load_vit_checkpoint_new_head(vit_ckpt):
    vit, path = vit_ckpt
    vir = timm.create_model(TINY, pretrained=True, num_classes=3,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    _assert_trunk_from_vit(vir, vit)
    assert vir.head.weight.shape == (3, 192)
    assert torch.all(vir.head.bias == 0)  # fresh init (the ViT head bias was perturbed)
    assert 0.005 < vir.head.weight.std().item() < 0.05


def test_load_vit_checkpoint_with_other_head_size_into_default_model(vit_ckpt):
    """A 10-class ViT file into a default 1000-class ViR: trunk loaded, classifier fresh, no crash."""
    vit, path = vit_ckpt
    vir = timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_trunk_from_vit(vir, vit)
    assert vir.head.weight.shape == (1000, 192) and torch.all(vir.head.bias == 0)


def test_load_vit_checkpoint_other_resolution(tmp_path):
    vit = _perturb(timm.create_model('vit_tiny_patch16_224', img_size=384, num_classes=10), seed=22)
    assert vit.pos_embed.shape == (1, 577, 192)
    path = tmp_path / 'vit384.pth'
    torch.save(vit.state_dict(), path)
    vir = timm.create_model(TINY, pretrained=True, num_classes=10,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    assert vir.pos_embed.shape == (1, 196, 192)
    grid = vit.pos_embed[:, 1:].detach().reshape(1, 24, 24, 192).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(14, 14), mode='bicubic', antialias=True, align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 196, 192)
    torch.testing.assert_close(vir.pos_embed.detach(), expected, rtol=0, atol=1e-6)
    assert torch.equal(vir.blocks[5].retention.qkv.weight, vit.blocks[5].attn.qkv.weight)


def test_vir_checkpoint_round_trip(tiny_state, tmp_path):
    path = tmp_path / 'vir_tiny.pth'
    torch.save(tiny_state, path)
    vir = timm.create_model(TINY, pretrained=True, num_classes=10, init_values=1.0,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    loaded = vir.state_dict()
    assert list(loaded) == list(tiny_state)
    for key, value in tiny_state.items():
        assert torch.equal(loaded[key], value), key


# ----------------------------------------------------------------------------------------------
# bf16


def test_bf16_model_keeps_float32_decay(tiny_state, tiny):
    x = _image(224, 224, batch=2, seed=8)
    with torch.no_grad():
        ref = tiny(x)
        model = _build(tiny_state).to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        log_decay = model.blocks[0].retention._log_decay(xb)
        assert log_decay.dtype == torch.float32
        torch.testing.assert_close(log_decay, torch.tensor(decay_schedule('vir', 3), dtype=torch.float32))
        assert torch.exp(log_decay[-1]).item() < 1.0

        def rel(y):
            return ((y.float() - ref).norm() / ref.norm()).item()

        for mode, chunk in [('parallel', None), ('chunkwise', 64)]:
            model.set_retention_mode(mode, chunk)
            out = model(xb)
            assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
            assert rel(out) < 5e-2, mode

            tiny_ac = copy.deepcopy(tiny)
            tiny_ac.set_retention_mode(mode, chunk)
            with torch.autocast('cpu', dtype=torch.bfloat16):
                out_ac = tiny_ac(x)
            assert torch.isfinite(out_ac).all()
            assert rel(out_ac) < 5e-2, mode


def test_without_position_embedding(vit_ckpt):
    """pos_embed='none' (timm's ViT option): no position term at all, and ViT checkpoints still load."""
    vit, path = vit_ckpt
    vir = timm.create_model(TINY, pretrained=True, pos_embed='none', num_classes=10,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    assert vir.pos_embed is None and 'pos_embed' not in vir.state_dict()
    with_zero_positions = timm.create_model(TINY, pretrained=True, num_classes=10,
                                            pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    with torch.no_grad():
        with_zero_positions.pos_embed.zero_()
        image = _image(64, 96)
        assert torch.equal(vir(image), with_zero_positions(image))
    assert torch.equal(vir.blocks[0].retention.qkv.weight, vit.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match='pos_embed'):
        timm.create_model(TINY, pos_embed='sincos')
