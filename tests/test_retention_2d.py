"""Tests of 2D retention (``vir_lightning/models/retention_2d.py``) and ViR with ``geometry='2d'``.

Both forms are checked against a brute-force reference written here from the definition

    o_n = sum_m D[n, m] (q_n . k_m) v_m,   D[n, m] = gamma^(|y_n - y_m| + |x_n - x_m|)       (bidirectional)
                                                     gamma^((y_n - y_m) + (x_n - x_m)), y_m <= y_n and x_m <= x_n
                                                                                          (causal, else 0)
"""
import math

import pytest
import timm
import torch

import vir_lightning  # noqa: F401  (registers the models)
from vir_lightning.models.retention import DIRECTIONS, decay_schedule
from vir_lightning.models.retention_2d import read_all, retention_2d
from conftest import LargestTensor

GRIDS = [(6, 6), (5, 7), (7, 3), (1, 9), (9, 1), (11, 13)]
TILES = [1, 2, 3, 4, 8]


def _reference(q, k, v, gammas, grid, direction):
    """Brute force: an explicit decay matrix built with Python's ** over grid coordinates, and an einsum."""
    rows, cols = grid
    cells = [(y, x) for y in range(rows) for x in range(cols)]
    decay = []
    for g in gammas:
        if direction == 'causal':
            decay.append([[g ** ((y - y2) + (x - x2)) if y2 <= y and x2 <= x else 0.0 for y2, x2 in cells]
                          for y, x in cells])
        else:
            decay.append([[g ** (abs(y - y2) + abs(x - x2)) for y2, x2 in cells] for y, x in cells])
    decay = torch.tensor(decay, dtype=torch.float64)
    return torch.einsum('hnm,bhnd,bhmd,bhme->bhne', decay, q.double(), k.double(), v.double())


def _qkv(n, dtype=torch.float64, seed=0, heads=3, d=4, dv=5, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, heads, n, e, generator=g, dtype=dtype).requires_grad_(requires_grad)
                 for e in (d, d, dv))


FAST = [0.5, 0.8, 0.97]  # fast decays, so that the decay's shape matters across small grids


def _log_decay(dtype=torch.float64):
    return torch.tensor([math.log(g) for g in FAST], dtype=dtype)


@pytest.mark.parametrize('direction', DIRECTIONS)
@pytest.mark.parametrize('grid', [(3, 4), (4, 4), (1, 5)])
def test_parallel_form_is_the_definition(grid, direction):
    q, k, v = _qkv(grid[0] * grid[1])
    out = retention_2d(q, k, v, _log_decay(), grid, 'parallel', direction)
    assert torch.allclose(out, _reference(q, k, v, FAST, grid, direction), atol=1e-12, rtol=0)


@pytest.mark.parametrize('direction', DIRECTIONS)
@pytest.mark.parametrize('tile', TILES)
@pytest.mark.parametrize('grid', GRIDS, ids=[f'{r}x{c}' for r, c in GRIDS])
def test_chunkwise_equals_parallel_with_gradients_in_float64(grid, tile, direction):
    n = grid[0] * grid[1]
    inputs = _qkv(n, requires_grad=True)
    log_decay = _log_decay()
    outs, grads = [], []
    for mode in ('parallel', 'chunkwise'):
        out = retention_2d(*inputs, log_decay, grid, mode, direction, tile, scale=0.7)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
        grads.append(torch.autograd.grad((out * weight).sum(), inputs))
        outs.append(out.detach())
    assert (outs[0] - outs[1]).abs().max() < 1e-9 * outs[0].abs().max()
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-9 * a.abs().max()


@pytest.mark.parametrize('direction', DIRECTIONS)
@pytest.mark.parametrize('grid', [(16, 16), (12, 20)])
def test_chunkwise_equals_parallel_in_float32_with_the_vir_decays(grid, direction):
    n = grid[0] * grid[1]
    log_decay = torch.tensor(decay_schedule('vir', 3))
    inputs = _qkv(n, dtype=torch.float32, d=16, dv=16, requires_grad=True)
    ref_inputs = tuple(t.detach().double().requires_grad_() for t in inputs)
    ref = retention_2d(*ref_inputs, log_decay.double(), grid, 'parallel', direction, scale=0.25)
    out = retention_2d(*inputs, log_decay, grid, 'chunkwise', direction, tile=8, scale=0.25)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 1e-4 * ref.abs().max()
    ref_grads = torch.autograd.grad(ref.sum(), ref_inputs)
    for a, b in zip(torch.autograd.grad(out.sum(), inputs), ref_grads):
        assert (a - b).abs().max() < 1e-4 * b.abs().max()


@pytest.mark.parametrize('mode', ['parallel', 'chunkwise'])
def test_causal_2d_reads_only_up_and_left(mode):
    grid, (y, x) = (6, 7), (3, 4)
    n = grid[0] * grid[1]
    q, k, v = _qkv(n)
    base = retention_2d(q, k, v, _log_decay(), grid, mode, 'causal', tile=3)
    for other, seen in (((2, 6), False), ((4, 1), False), ((3, 5), False), ((0, 0), True), ((3, 2), True)):
        k2 = k.clone()
        k2[:, :, other[0] * grid[1] + other[1]] += 1.0
        changed = retention_2d(q, k2, v, _log_decay(), grid, mode, 'causal', tile=3)
        moved = (changed - base)[:, :, y * grid[1] + x].abs().max().item()
        assert (moved > 1e-6) == seen, f'key at {other}'


def test_2d_decay_reaches_the_patch_above_as_the_one_beside():
    """The point of 2D: the patch directly above is one step away, as the one to the left, not a row back."""
    grid = (8, 8)
    q, k, v = (torch.ones(1, 1, 64, 1, dtype=torch.float64) for _ in range(3))
    log_decay = torch.tensor([math.log(0.5)], dtype=torch.float64)
    weights = []
    for neighbour in (3 * 8 + 4, 4 * 8 + 3):  # above (3, 4) and left (4, 3) of (4, 4)
        v2 = v.clone()
        v2[..., neighbour, 0] += 1
        weights.append((retention_2d(q, k, v2, log_decay, grid, 'chunkwise', 'causal', 3) -
                        retention_2d(q, k, v, log_decay, grid, 'chunkwise', 'causal', 3))[0, 0, 4 * 8 + 4, 0])
    assert weights[0].item() == pytest.approx(0.5) and weights[1].item() == pytest.approx(0.5)


@pytest.mark.parametrize('direction', DIRECTIONS)
def test_bf16_autocast_stays_close_to_float64(direction):
    grid = (16, 16)
    q, k, v = _qkv(256, dtype=torch.float32, d=16, dv=16)
    log_decay = torch.tensor(decay_schedule('vir', 3))
    ref = retention_2d(q.double(), k.double(), v.double(), log_decay.double(), grid, 'parallel', direction, scale=0.25)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = retention_2d(q, k, v, log_decay, grid, 'chunkwise', direction, 8, scale=0.25)
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).norm() / ref.norm()).item() < 2e-2



@pytest.mark.parametrize('direction', DIRECTIONS)
def test_chunkwise_never_forms_an_n_by_n_tensor(direction):
    grid, n = (48, 48), 48 * 48
    q, k, v = (torch.randn(1, 1, n, 4, requires_grad=True) for _ in range(3))
    with LargestTensor() as probe:
        retention_2d(q, k, v, torch.tensor([-0.05]), grid, 'chunkwise', direction, 8).sum().backward()
    assert probe.largest <= n * 64


def test_class_token_reads_every_token_undecayed_and_no_patch_reads_it():
    torch.manual_seed(0)
    model = timm.create_model('vir_tiny_patch16_224', geometry='2d', direction='bidirectional', depth=2,
                              num_classes=0).double().eval()
    x = torch.randn(1, 3, 64, 48, dtype=torch.float64)
    features = model.forward_features(x)
    with torch.no_grad():
        model.cls_token.add_(torch.randn_like(model.cls_token))  # patches never read it, in any block
    changed = model.forward_features(x)
    assert torch.allclose(changed[:, :-1], features[:, :-1], atol=1e-12, rtol=0)
    assert not torch.allclose(changed[:, -1], features[:, -1])
    q, k, v = _qkv(13)
    assert torch.allclose(read_all(q[:, :, -1:], k, v, 0.5),
                          0.5 * torch.einsum('bhd,bhmd,bhme->bhe', q[:, :, -1], k, v)[:, :, None], atol=1e-12)


@pytest.mark.parametrize('direction', DIRECTIONS)
def test_vir_2d_forms_agree_on_features_and_logits(direction):
    torch.manual_seed(0)
    model = timm.create_model('vir_tiny_patch16_224', geometry='2d', direction=direction, depth=2, num_classes=4,
                              retention_mode='parallel', init_values=1.0).double().eval()
    x = torch.randn(2, 3, 80, 112, dtype=torch.float64)  # a 5 x 7 grid
    logits, features = model(x), model.forward_intermediates(x, intermediates_only=True)[-1]
    model.set_retention_mode('chunkwise', chunk_size=9)  # 3 x 3 tiles
    assert torch.allclose(model(x), logits, atol=1e-9, rtol=0)
    assert torch.allclose(model.forward_intermediates(x, intermediates_only=True)[-1], features, atol=1e-9, rtol=0)
    model_1d = timm.create_model('vir_tiny_patch16_224', direction=direction, depth=2, num_classes=4).double().eval()
    model_1d.load_state_dict(model.state_dict())
    features_1d = model_1d.forward_intermediates(x, intermediates_only=True)[-1]
    assert (features_1d - features).abs().max() > 1e-3 * features.abs().max()  # the geometry is what differs


def test_vit_checkpoint_initialises_vir_2d(tmp_path):
    vit = timm.create_model('vit_tiny_patch16_224', num_classes=3)
    torch.save(vit.state_dict(), tmp_path / 'vit.pth')
    model = timm.create_model('vir_tiny_patch16_224', geometry='2d', num_classes=3, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'vit.pth')))
    assert torch.equal(model.blocks[5].retention.qkv.weight, vit.blocks[5].attn.qkv.weight)
    assert torch.equal(model.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize('kwargs,needle', [
    (dict(geometry='3d'), "retention geometry"),
    (dict(geometry='2d', retention_mode='recurrent'), "'recurrent' is the 1D"),
    (dict(geometry='2d', retention_kernel='fla'), "flash-linear-attention"),
])
def test_bad_geometry_options_raise_clearly(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        timm.create_model('vir_tiny_patch16_224', **kwargs)


def test_retention_2d_without_a_grid_says_so():
    block = timm.create_model('vir_tiny_patch16_224', geometry='2d').blocks[0]
    with pytest.raises(ValueError, match='needs the patch grid'):
        block.retention(torch.randn(1, 17, 192))


def test_adavit_refuses_a_2d_vir():
    from vir_lightning.models import AdaptiveVisionTransformer
    backbone = timm.create_model('vir_tiny_patch16_224', geometry='2d', depth=2)
    with pytest.raises(ValueError, match="geometry '1d'"):
        AdaptiveVisionTransformer(backbone)
