"""The QnA layer: its two forms against each other and against a per-pixel loop of the paper's
formula, its numerics in bf16/fp16 where the official formulation overflows, and its errors."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import vir_lightning  # noqa: F401  (registers the models)
from vir_lightning.models import QnA


def _layer(k, stride, dim=8, heads=2, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layer = QnA(dim, 2 * dim if stride == 2 else None, num_heads=heads, kernel_size=k, stride=stride).to(dtype)
    with torch.no_grad():  # away from the initialisation (zero biases, tiny offset weights), so every term counts
        layer.rel_pos_bias.normal_()
        layer.attn_scale.normal_()
    return layer


def _loop_reference(layer, x):
    """out(o) = proj(sum_q sum_a w(a) exp(s(a)+b(a)) v(a) / sum_a exp(s(a)+b(a))), pixel by pixel."""
    B, H, W, _ = x.shape
    nq, h, d, k, s, p = layer.n_queries, layer.num_heads, layer.head_dim, layer.kernel_size, layer.stride, layer.padding
    scores = layer.scores(x)  # [B, nq*h, H, W]
    v = layer.value(x)  # [B, H, W, h*d]
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    out = x.new_zeros(B, Ho, Wo, h * d)
    for oy in range(Ho):
        for ox in range(Wo):
            for qi in range(nq):
                for hi in range(h):
                    c = qi * h + hi
                    logits, values, weights = [], [], []
                    for u in range(k):
                        for t in range(k):
                            iy, ix = oy * s - p + u, ox * s - p + t
                            if 0 <= iy < H and 0 <= ix < W:
                                logits.append(scores[:, c, iy, ix] + layer.rel_pos_bias[c, u, t])
                                values.append(v[:, iy, ix, hi * d:(hi + 1) * d])
                                weights.append(layer.attn_scale[c, u, t])
                    attn = torch.stack(logits, 1).softmax(1) * torch.stack(weights)
                    out[:, oy, ox, hi * d:(hi + 1) * d] += torch.einsum('ba,bad->bd', attn, torch.stack(values, 1))
    return layer.proj(out)


@pytest.mark.parametrize('k,stride,size', [(3, 1, (5, 6)), (3, 2, (5, 6)), (5, 2, (4, 7))])
def test_both_forms_are_the_papers_formula(k, stride, size):
    layer = _layer(k, stride)
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    expected = _loop_reference(layer, x)
    for mode in ('naive', 'conv'):
        layer.set_mode(mode)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def _forward_backward(layer, x, mode):
    layer.set_mode(mode)
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = layer(x)
    out.mul(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-9), (torch.float32, 1e-4)])
@pytest.mark.parametrize('k', [3, 5, 7])
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('size', [(9, 9), (8, 8), (7, 10)], ids=['odd', 'even', 'non-square'])
def test_conv_form_matches_naive_on_outputs_and_gradients(dtype, tol, k, stride, size):
    layer = _layer(k, stride, dtype=dtype)
    x = torch.randn(2, *size, 8, dtype=dtype, generator=torch.Generator().manual_seed(1))
    out_n, dx_n, dp_n = _forward_backward(layer, x, 'naive')
    out_c, dx_c, dp_c = _forward_backward(layer, x, 'conv')
    assert out_c.shape == (2, -(-size[0] // stride), -(-size[1] // stride), layer.proj.out_features)
    torch.testing.assert_close(out_c, out_n, rtol=tol, atol=tol)
    torch.testing.assert_close(dx_c, dx_n, rtol=tol, atol=tol)
    assert dp_n.keys() == dp_c.keys()
    for name in dp_n:
        torch.testing.assert_close(dp_c[name], dp_n[name], rtol=tol, atol=tol, msg=name)


def _official_conv_form(layer, x):
    """The official layer's arithmetic: exp of the raw scores and biases, in the input's dtype."""
    B, H, W, _ = x.shape
    nq, h, d = layer.n_queries, layer.num_heads, layer.head_dim
    conv = dict(stride=layer.stride, padding=layer.padding)
    exp_s, v = layer.scores(x).exp(), layer.value(x).permute(0, 3, 1, 2)
    exp_b = layer.rel_pos_bias.exp()
    weighted = (exp_s.view(B, nq, h, 1, H, W) * v.view(B, 1, h, d, H, W)).reshape(B, nq * h * d, H, W)
    num = F.conv2d(weighted, (exp_b * layer.attn_scale).repeat_interleave(d, 0).unsqueeze(1), groups=nq * h * d, **conv)
    den = F.conv2d(exp_s, exp_b.unsqueeze(1), groups=nq * h, **conv)
    Ho, Wo = num.shape[-2:]
    out = (num.view(B, nq, h, d, Ho, Wo) / den.view(B, nq, h, 1, Ho, Wo)).sum(1).reshape(B, h * d, Ho, Wo)
    return layer.proj(out.permute(0, 2, 3, 1))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_stays_finite_where_the_official_formulation_overflows(dtype):
    reference = _layer(3, 1, dtype=torch.float64)
    layer = _layer(3, 1, dtype=dtype)
    layer.load_state_dict({n: p.to(dtype) for n, p in reference.state_dict().items()})
    x = torch.randn(1, 6, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    overflowed = False
    for scale in (1, 10, 100, 1000, 10000):
        xs = (x * scale).to(dtype)
        with torch.no_grad():
            official = _official_conv_form(layer, xs)
            ours = {mode: (layer.set_mode(mode), layer(xs))[1] for mode in ('conv', 'naive')}
            exact = reference(xs.double())
        official_finite = torch.isfinite(official).all().item()
        overflowed |= not official_finite
        for out in ours.values():
            assert out.dtype == dtype and torch.isfinite(out).all(), scale
        # both forms read the same low-precision scores and attend in float32: they agree at every scale
        torch.testing.assert_close(ours['conv'].float(), ours['naive'].float(), rtol=0.02, atol=0.02)
        if official_finite:  # where the official form still works, ours is as accurate as the dtype allows
            error = (ours['conv'].double() - exact).abs().max() / exact.abs().max()
            assert error < 0.05, (scale, error)
    assert overflowed, "the scales tried never broke the official formulation: the test proves nothing"


QNA_MODELS = timm.list_models('qna_vit_*')
SHALLOW = dict(qna_depths=(1, 1, 1, 0), window_depths=(0, 0, 1, 1))


@pytest.mark.parametrize('name', QNA_MODELS)
def test_every_qna_model_gives_the_same_numbers_in_both_forms(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, drop_path_rate=0., **SHALLOW).double()  # no random drops
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    results = []
    for mode in ('naive', 'conv'):
        model.set_qna_mode(mode)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-9, atol=1e-9)
    for name_ in results[0][1]:
        torch.testing.assert_close(results[1][1][name_], results[0][1][name_], rtol=1e-9, atol=1e-9, msg=name_)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('name', QNA_MODELS)
def test_autocast_training_step_of_every_model_is_finite_for_large_inputs(name, dtype):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **SHALLOW)
    x = torch.randn(2, 3, 64, 64) * 1e4
    with torch.autocast('cpu', dtype=dtype):
        loss = model(x).float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_attention_runs_in_float32_under_autocast():
    layer = _layer(3, 1, dtype=torch.float32)
    x = torch.randn(1, 5, 5, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16  # the output projection autocasts as any linear
    torch.testing.assert_close(out.float(), layer(x), rtol=0.02, atol=0.02)


@pytest.mark.parametrize('kwargs,match', [
    (dict(kernel_size=4), 'odd positive integer.*got 4: use 3 or 5'),
    (dict(kernel_size=0), 'odd positive integer'),
    (dict(stride=3), 'stride must be 1 or 2'),
    (dict(num_heads=3), 'divisible by num_heads'),
    (dict(mode='fast'), "unknown QnA mode 'fast'"),
])
def test_bad_layer_options_are_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QnA(8, **kwargs)


def test_window_larger_than_the_map_is_explained():
    layer = QnA(8, num_heads=2, kernel_size=7)
    layer(torch.randn(1, 4, 5, 8))  # 7x7 windows reach every pixel of a 4x5 map from every pixel
    with pytest.raises(ValueError, match='window 7x7 needs a map of at least 4x4.*got 3x5'):
        layer(torch.randn(1, 3, 5, 8))


@pytest.mark.parametrize('kwargs,match', [
    (dict(kernel_size=4), 'odd positive integer'),
    (dict(qna_heads=(8, 16, 32)), 'qna_heads needs one value per stage'),
    (dict(global_pool='token'), "unknown global_pool 'token'"),
])
def test_bad_model_options_are_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('qna_vit_tiny', **kwargs)


def test_input_sizes():
    model = timm.create_model('qna_vit_tiny', qna_depths=(1, 1, 1, 0), window_depths=(0, 0, 1, 1)).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 28, 44)).shape == (1, 1, 2, 512)  # ceil at every halving
        with pytest.raises(ValueError, match='30x32 is not a multiple of the 4-pixel stem.*32x32.*dynamic_img_pad'):
            model(torch.randn(1, 3, 30, 32))
        with pytest.raises(ValueError, match=r'needs a map of at least 2x2.*got 1x1'):
            model(torch.randn(1, 3, 16, 16))  # the stride-2 block into stage 4 sees a 1x1 map
        with pytest.raises(ValueError, match=r'\[batch, 3, height, width\]'):
            model(torch.randn(1, 1, 32, 32))
    padded = timm.create_model('qna_vit_tiny', qna_depths=(1, 1, 1, 0), window_depths=(0, 0, 1, 1),
                               dynamic_img_pad=True).eval()
    with torch.no_grad():
        assert padded(torch.randn(1, 3, 30, 33)).shape == (1, 1000)


def _window_reference(block, x):
    """Each real token attends to the real tokens of its window, with the table's bias of their offset."""
    attn, (Wh, Ww) = block.attn, block.window_size
    _, H, W, C = x.shape
    wh, ww = min(Wh, H), min(Ww, W)
    y = block.norm1(x)[0]
    q, k, v = attn.qkv(y).reshape(H, W, 3, attn.num_heads, -1).unbind(2)
    out = torch.zeros_like(y)
    for ty in range(H):
        for tx in range(W):
            keys = [(sy, sx) for sy in range(H) for sx in range(W) if (sy // wh, sx // ww) == (ty // wh, tx // ww)]
            bias = torch.stack([attn.relative_position_bias_table[(ty - sy + Wh - 1) * (2 * Ww - 1) + tx - sx + Ww - 1]
                                for sy, sx in keys])  # [keys, heads]
            logits = torch.einsum('hd,khd->kh', q[ty, tx], torch.stack([k[p] for p in keys])) * attn.scale + bias
            mixed = torch.einsum('kh,khd->hd', logits.softmax(0), torch.stack([v[p] for p in keys]))
            out[ty, tx] = attn.proj(mixed.reshape(-1))
    x = x + out
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize('size', [(3, 3), (6, 9), (8, 8)], ids=['smaller than the window', 'padded', 'divides'])
def test_window_attention_is_attention_over_the_real_tokens(size):
    from vir_lightning.models import WindowAttentionBlock
    torch.manual_seed(0)
    block = WindowAttentionBlock(16, 2, window_size=4).double().eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
    x = torch.randn(1, *size, 16, dtype=torch.float64)
    torch.testing.assert_close(block(x), _window_reference(block, x), rtol=0, atol=1e-12)


def test_parameters_and_flops_at_224_match_the_paper():
    """Paper: Tiny 16M / 2.5G, Small 25M / 4.4G, Base 56M / 9.7G (multiply-adds); within 5 % (FLOPs: Tiny)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    for name, params in (('qna_vit_tiny', 16), ('qna_vit_small', 25), ('qna_vit_base', 56)):
        model = timm.create_model(name).eval()
        millions = sum(p.numel() for p in model.parameters()) / 1e6
        assert math.isclose(millions, params, rel_tol=0.05), (name, millions)
    model = timm.create_model('qna_vit_tiny').eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:  # the CPU flash kernel is not counted
        model(torch.randn(1, 3, 224, 224))
    assert math.isclose(counter.get_total_flops() / 2e9, 2.5, rel_tol=0.05), counter.get_total_flops()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_cuda_autocast_matches_the_float64_reference(dtype):
    reference = _layer(5, 2, dim=32, heads=4, dtype=torch.float64)
    layer = _layer(5, 2, dim=32, heads=4, dtype=torch.float32).cuda()
    layer.load_state_dict({n: p.float() for n, p in reference.state_dict().items()})
    x = torch.randn(2, 17, 22, 32, dtype=torch.float64)
    with torch.no_grad(), torch.autocast('cuda', dtype=dtype):
        out = layer(x.float().cuda())
        exact = reference(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double().cpu(), exact, rtol=0.05, atol=0.05)


def test_zero_padded_regions_keep_gradients_bounded():
    """Padded image regions (zeros) must not become zero-variance tokens whose LayerNorm gradients
    grow 1000x per norm: with the official bias-free, norm-free stem this overflowed at step 0."""
    torch.manual_seed(0)
    model = timm.create_model('qna_vit_tiny', num_classes=3, drop_path_rate=0.)
    x = torch.zeros(1, 3, 256, 256)
    x[..., :96, :96] = torch.randn(1, 3, 96, 96)  # an image in the corner of a zero-padded canvas
    model(x).square().sum().backward()
    largest = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    assert largest < 1e3, largest
