"""Tests of the functional retention in ``vir_lightning/models/retention.py``.

Every form (parallel, recurrent, chunkwise) is checked against a brute-force reference written
here directly from the definition

    o_n = sum_m D[n, m] (q_n . k_m) v_m,   D[n, m] = gamma^(n - m) (m <= n, causal)
                                                     gamma^|n - m|  (bidirectional)
"""
import importlib
import math

import pytest
import torch

from conftest import LargestTensor
from vir_lightning.models import Retention
from vir_lightning.models.retention import (
    DIRECTIONS, RETENTION_MODES, cached_parallel_decay, decay_schedule, retention, retention_parallel,
)

retention_forms = importlib.import_module('vir_lightning.models.retention')  # the module, not the function

B, H, N, D = 2, 3, 37, 8

# (mode, chunk_size); 64 is larger than N = 37
FORMS = [('parallel', None), ('recurrent', None)] + [('chunkwise', c) for c in (1, 3, 7, 16, 64)]
FORM_IDS = [m if c is None else f'{m}{c}' for m, c in FORMS]


def _run(q, k, v, log_decay, mode, chunk_size, direction):
    kwargs = {} if chunk_size is None else dict(chunk_size=chunk_size)
    return retention(q, k, v, log_decay, mode=mode, direction=direction, **kwargs)


def _reference(q, k, v, gammas, direction):
    """Brute force from the definition: an explicit decay matrix built with Python's ** and an einsum."""
    n = q.shape[-2]
    rows = []
    for g in gammas:
        if direction == 'causal':
            rows.append([[g ** (i - j) if j <= i else 0.0 for j in range(n)] for i in range(n)])
        else:
            rows.append([[g ** abs(i - j) for j in range(n)] for i in range(n)])
    decay = torch.tensor(rows, dtype=torch.float64)  # [H, N, N]
    return torch.einsum('hnm,bhnd,bhmd,bhme->bhne', decay, q.double(), k.double(), v.double())


def _reference_loop(q, k, v, gammas, direction):
    """The same definition as an explicit double loop (used once to validate the einsum reference)."""
    b, h, n, _ = q.shape
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float64)
    for hh in range(h):
        for i in range(n):
            for j in range(n):
                if direction == 'causal' and j > i:
                    continue
                w = gammas[hh] ** abs(i - j)
                out[:, hh, i] += w * (q[:, hh, i] * k[:, hh, j]).sum(-1, keepdim=True) * v[:, hh, j]
    return out


def _qkv(b=B, h=H, n=N, d=D, dv=D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, n, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, n, dv, generator=g, dtype=dtype)
    return q, k, v


# ViR's own schedule (slow decays: 0.96875 .. 0.998) and a set of fast decays so that the mask
# matters strongly inside N = 37 tokens.
DECAYS = {
    'vir': [math.exp(x) for x in decay_schedule('vir', H)],
    'fast': [0.5, 0.85, 0.99],
}


def test_reference_matches_double_loop():
    q, k, v = _qkv(b=1, n=9, dv=5)
    for direction in DIRECTIONS:
        torch.testing.assert_close(
            _reference(q, k, v, DECAYS['fast'], direction), _reference_loop(q, k, v, DECAYS['fast'], direction),
            rtol=0, atol=1e-12)


@pytest.mark.parametrize('direction', DIRECTIONS)
@pytest.mark.parametrize('decays', sorted(DECAYS))
@pytest.mark.parametrize('dv', [D, 5])
@pytest.mark.parametrize('mode,chunk_size', FORMS, ids=FORM_IDS)
def test_form_matches_bruteforce(mode, chunk_size, dv, decays, direction):
    q, k, v = _qkv(dv=dv)
    gammas = DECAYS[decays]
    log_decay = torch.tensor([math.log(g) for g in gammas], dtype=torch.float64)
    out = _run(q, k, v, log_decay, mode, chunk_size, direction)
    ref = _reference(q, k, v, gammas, direction)
    assert out.shape == (B, H, N, dv)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_directions_differ():
    """Guard against a reference that cannot tell the two directions apart."""
    q, k, v = _qkv()
    causal = _reference(q, k, v, DECAYS['vir'], 'causal')
    bidir = _reference(q, k, v, DECAYS['vir'], 'bidirectional')
    assert (causal - bidir).abs().max() > 1.0
    # the last token sees everything in both directions
    torch.testing.assert_close(causal[:, :, -1], bidir[:, :, -1], rtol=0, atol=1e-10)


@pytest.mark.parametrize('mode,chunk_size', FORMS, ids=FORM_IDS)
def test_causality_exact(mode, chunk_size):
    """Changing the last token's key/value leaves every earlier output bit-identical."""
    q, k, v = _qkv(dtype=torch.float32)
    log_decay = torch.tensor(decay_schedule('vir', H))
    out = _run(q, k, v, log_decay, mode, chunk_size, 'causal')
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 3.0 * torch.randn_like(k2[:, :, -1])
    v2[:, :, -1] += 3.0 * torch.randn_like(v2[:, :, -1])
    out2 = _run(q, k2, v2, log_decay, mode, chunk_size, 'causal')
    assert torch.equal(out[:, :, :-1], out2[:, :, :-1])
    assert (out[:, :, -1] - out2[:, :, -1]).abs().max() > 1e-3

    # a token in the middle (inside a chunk for every chunk size > 1): outputs before it unchanged
    t = 20
    k3 = k.clone()
    k3[:, :, t] += 1.0
    out3 = _run(q, k3, v, log_decay, mode, chunk_size, 'causal')
    assert torch.equal(out[:, :, :t], out3[:, :, :t])
    assert (out[:, :, t:] - out3[:, :, t:]).abs().max() > 1e-3


@pytest.mark.parametrize('mode,chunk_size', FORMS, ids=FORM_IDS)
def test_bidirectional_sees_the_future(mode, chunk_size):
    q, k, v = _qkv(dtype=torch.float32)
    log_decay = torch.tensor(decay_schedule('vir', H))
    out = _run(q, k, v, log_decay, mode, chunk_size, 'bidirectional')
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 3.0
    v2[:, :, -1] += 3.0
    out2 = _run(q, k2, v2, log_decay, mode, chunk_size, 'bidirectional')
    assert (out[:, :, 0] - out2[:, :, 0]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# decay schedules


@pytest.mark.parametrize('num_heads', [2, 3, 12])
def test_vir_schedule(num_heads):
    log_decay = decay_schedule('vir', num_heads)
    assert len(log_decay) == num_heads
    gammas = [math.exp(x) for x in log_decay]
    assert gammas[0] == pytest.approx(1 - 1 / 32, abs=1e-12)
    assert gammas[-1] == pytest.approx(1 - 1 / 512, abs=1e-12)
    assert all(a < b for a, b in zip(gammas, gammas[1:]))
    # the rates 1 - gamma are log-spaced between 1/32 and 1/512
    log_rates = [math.log(1 - g) for g in gammas]
    steps = [b - a for a, b in zip(log_rates, log_rates[1:])]
    for s in steps:
        assert s == pytest.approx(math.log(1 / 16) / (num_heads - 1), abs=1e-9)


def test_vir_schedule_three_heads_middle():
    gammas = [math.exp(x) for x in decay_schedule('vir', 3)]
    assert gammas == pytest.approx([1 - 1 / 32, 1 - 1 / 128, 1 - 1 / 512], abs=1e-12)


def test_vir_schedule_one_head():
    assert [math.exp(x) for x in decay_schedule('vir', 1)] == pytest.approx([0.96875], abs=1e-12)


@pytest.mark.parametrize('num_heads', [1, 4, 16])
def test_retnet_schedule(num_heads):
    gammas = [math.exp(x) for x in decay_schedule('retnet', num_heads)]
    assert gammas == pytest.approx([1 - 2.0 ** (-5 - h) for h in range(num_heads)], abs=1e-12)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError) as info:
        decay_schedule('linear', 4)
    msg = str(info.value)
    assert 'linear' in msg and 'vir' in msg and 'retnet' in msg


# ----------------------------------------------------------------------------------------------
# argument validation: once, when the module is built or switched (retention() itself only dispatches)


@pytest.mark.parametrize('kwargs,needle', [
    (dict(mode='softmax'), 'softmax'),
    (dict(mode=''), 'mode'),
    (dict(direction='anticausal'), 'anticausal'),
    (dict(direction='forward'), 'forward'),
    (dict(mode='chunkwise', chunk_size=0), 'chunk_size'),
    (dict(mode='chunkwise', chunk_size=-4), 'chunk_size'),
])
def test_bad_arguments_raise(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Retention(16, num_heads=2, **kwargs)
    module = Retention(16, num_heads=2)
    if 'mode' in kwargs:
        with pytest.raises(ValueError, match=needle):
            module.set_mode(kwargs['mode'], kwargs.get('chunk_size'))
        assert module.mode == 'auto'  # a rejected switch leaves the module as it was


# ----------------------------------------------------------------------------------------------
# long sequences: the factored form Q gamma^n, K gamma^-n overflows (fp32 beyond ~2,790 tokens at
# gamma = 0.96875; fp64 beyond ~1,000 tokens at gamma = 0.5). Decay powers must stay chunk-local.


LONG_GAMMAS = [1 - 1 / 32, 0.5]  # ViR's fastest head, and a decay for which gamma^-5000 overflows float64 too


@pytest.fixture(scope='module')
def long_case():
    g = torch.Generator().manual_seed(7)
    shape = (1, 2, 5000, 4)
    q, k, v = (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5 for _ in range(3))
    log_decay = torch.tensor([math.log(x) for x in LONG_GAMMAS], dtype=torch.float64)
    ref = retention(q, k, v, log_decay, mode='parallel', direction='causal')
    assert torch.isfinite(ref).all()
    return q, k, v, log_decay, ref


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=['f64', 'f32'])
def test_long_sequence_chunkwise_causal(long_case, dtype, tol):
    q, k, v, log_decay, ref = long_case
    scale = ref.abs().max()
    for chunk_size in (64, 96):  # 96 does not divide 5000
        out = retention(q.to(dtype), k.to(dtype), v.to(dtype), log_decay.to(dtype),
                        mode='chunkwise', direction='causal', chunk_size=chunk_size)
        assert out.dtype == dtype
        assert torch.isfinite(out).all()
        assert ((out.double() - ref).abs().max() / scale) <= tol
    # the very last tokens are still fed by their neighbours (nothing decayed or overflowed to 0/inf)
    assert ref[..., -1, :].abs().max() > 1e-3


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=['f64', 'f32'])
def test_long_sequence_chunkwise_bidirectional(long_case, dtype, tol):
    """Bidirectional at 5000 tokens against the recurrent form (no decay powers at all; cheaper than parallel)."""
    q, k, v, log_decay, _ = long_case
    ref = retention(q, k, v, log_decay, mode='recurrent', direction='bidirectional')
    assert torch.isfinite(ref).all()
    out = retention(q.to(dtype), k.to(dtype), v.to(dtype), log_decay.to(dtype),
                    mode='chunkwise', direction='bidirectional', chunk_size=96)
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).abs().max() / ref.abs().max()) <= tol


# ----------------------------------------------------------------------------------------------
# bf16: decays must stay in float32 under autocast (bf16 would round gamma = 1 - 1/512 to 1.0)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope='module')
def bf16_case():
    g = torch.Generator().manual_seed(3)
    shape = (1, 3, 512, 16)
    q = torch.randn(*shape, generator=g) * 16 ** -0.5
    k = torch.randn(*shape, generator=g)
    v = torch.randn(*shape, generator=g)
    log_decay = torch.tensor(decay_schedule('vir', 3), dtype=torch.float64)
    gamma_bf16 = log_decay.exp().to(torch.bfloat16).double()
    # premise of the test: bf16 rounds the slowest head's gamma (1 - 1/512) to exactly 1.0
    assert gamma_bf16[-1].item() == 1.0
    refs, rounded = {}, {}
    for direction in DIRECTIONS:
        refs[direction] = retention(q.double(), k.double(), v.double(), log_decay, direction=direction)
        rounded[direction] = retention(q.double(), k.double(), v.double(), gamma_bf16.log(), direction=direction)
    return q, k, v, log_decay.float(), refs, rounded


@pytest.mark.parametrize('direction', DIRECTIONS)
@pytest.mark.parametrize('mode', ['parallel', 'chunkwise', 'recurrent'])
@pytest.mark.parametrize('inputs', ['autocast', 'bf16-tensors'])
def test_bf16_keeps_decay_in_float32(bf16_case, direction, mode, inputs):
    q, k, v, log_decay, refs, rounded = bf16_case
    ref, ref_rounded = refs[direction], rounded[direction]
    if inputs == 'autocast':
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = retention(q, k, v, log_decay, mode=mode, direction=direction, chunk_size=64)
    else:
        out = retention(q.bfloat16(), k.bfloat16(), v.bfloat16(), log_decay, mode=mode,
                        direction=direction, chunk_size=64)
    assert torch.isfinite(out).all()
    for h in range(3):
        assert _rel(out[:, h], ref[:, h]) < 3e-2, f'head {h}'
    # The slowest head: rounding gamma to 1.0 is a large error, and the bf16 result is far closer
    # to the true fp32 decay than to the rounded one.
    err_rounded = _rel(ref_rounded[:, 2], ref[:, 2])
    assert err_rounded > 0.1
    err = _rel(out[:, 2], ref[:, 2])
    assert err < 0.2 * err_rounded
    assert _rel(out[:, 2], ref_rounded[:, 2]) > 0.5 * err_rounded


# ----------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize('direction', DIRECTIONS)
@pytest.mark.parametrize('mode,chunk_size', [('chunkwise', 3), ('recurrent', None), ('parallel', None)])
def test_gradcheck(mode, chunk_size, direction):
    g = torch.Generator().manual_seed(11)
    q = torch.randn(1, 2, 10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 10, 2, generator=g, dtype=torch.float64, requires_grad=True)
    log_decay = torch.tensor([math.log(0.6), math.log(0.9)], dtype=torch.float64)

    def fn(q, k, v):
        return _run(q, k, v, log_decay, mode, chunk_size, direction)

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize('reverse', [False, True], ids=['forward', 'reverse'])
def test_the_chunk_state_scan_has_its_gradient_in_closed_form(reverse):
    """The scan's backward is a scan the other way, not autograd through the loop: it must give autograd's
    gradients for the updates and for decays shared across the batch (B' = 1), and gradcheck in float64."""
    g = torch.Generator().manual_seed(5)
    updates = torch.randn(2, 2, 5, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    decays = torch.rand(1, 2, 5, generator=g, dtype=torch.float64).requires_grad_()
    weights = torch.randn(2, 2, 5, 3, 2, generator=g, dtype=torch.float64)

    def loop(updates, decays):  # the recurrence written out, differentiated by autograd
        order = range(4, 0, -1) if reverse else range(4)
        states = {4 if reverse else 0: updates.new_zeros(2, 2, 3, 2)}
        for i in order:
            j = i - 1 if reverse else i + 1
            states[j] = decays[:, :, i, None, None] * states[i] + updates[:, :, i]
        return torch.stack([states[i] for i in range(5)], dim=2)

    scan = retention_forms._scan(updates, decays, reverse)
    expected = loop(updates, decays)
    assert torch.allclose(scan, expected, rtol=0, atol=1e-14)
    got = torch.autograd.grad((scan * weights).sum(), (updates, decays))
    want = torch.autograd.grad((expected * weights).sum(), (updates, decays))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=0, atol=1e-13)
    assert torch.autograd.gradcheck(lambda u, a: retention_forms._scan(u, a, reverse), (updates, decays))


@pytest.mark.parametrize('mode', RETENTION_MODES)
def test_output_dtype_is_the_same_for_every_form_under_autocast(mode):
    q = torch.randn(1, 2, 9, 4)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = retention(q, q, q, torch.tensor([-0.1, -0.01]), mode=mode, chunk_size=4)
    assert out.dtype == torch.float32


@pytest.mark.parametrize('mode', RETENTION_MODES)
@pytest.mark.parametrize('direction', DIRECTIONS)
def test_empty_sequence(mode, direction):
    q = torch.randn(2, 3, 0, 4)
    out = retention(q, q, torch.randn(2, 3, 0, 5), torch.tensor([-0.1] * 3), mode=mode, direction=direction)
    assert out.shape == (2, 3, 0, 5)


# ----------------------------------------------------------------------------------------------
# memory: the linear-cost form never builds an N x N tensor, forward or backward



@pytest.mark.parametrize('direction', DIRECTIONS)
@pytest.mark.parametrize('mode', ['chunkwise', 'parallel'])
def test_chunkwise_never_forms_an_n_by_n_tensor(mode, direction):
    n = 2048
    q, k, v = (torch.randn(1, 1, n, 4, requires_grad=True) for _ in range(3))
    with LargestTensor() as probe:
        retention(q, k, v, torch.tensor([-0.05]), mode=mode, direction=direction, chunk_size=64).sum().backward()
    if mode == 'parallel':
        assert probe.largest >= n * n  # the probe sees the score matrix when there is one
    else:
        assert probe.largest <= n * 64


# ----------------------------------------------------------------------------------------------
# kernels


def test_unknown_kernel_and_fla_without_cuda_raise_clearly():
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match='kernel'):
        Retention(16, num_heads=2, mode='chunkwise', kernel='triton')
    if not _fla_ready():
        with pytest.raises(ValueError, match=r"pip install '\.\[gpu\]'"):
            Retention(16, num_heads=2, mode='chunkwise', kernel='fla')
    # 'auto' falls back to the PyTorch form wherever fla cannot run
    auto = retention(q, q, q, torch.tensor([-0.1]), mode='chunkwise', kernel='auto')
    assert torch.equal(auto, retention(q, q, q, torch.tensor([-0.1]), mode='chunkwise', kernel='torch'))


def _fla_ready() -> bool:
    from vir_lightning.models.retention_fla import fla_available
    return fla_available()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.skipif(torch.cuda.is_available() and not _fla_ready(), reason="needs flash-linear-attention ('.[gpu]')")
@pytest.mark.parametrize('direction', DIRECTIONS)
def test_fla_kernel_matches_the_pytorch_form_in_bf16_with_gradients(direction):
    g = torch.Generator(device='cuda').manual_seed(0)
    shape = (2, 4, 1000, 64)  # not a multiple of fla's chunk
    q, k, v = (torch.randn(shape, device='cuda', generator=g, dtype=torch.bfloat16) for _ in range(3))
    q = (q * 64 ** -0.5).requires_grad_()
    k.requires_grad_()
    v.requires_grad_()
    log_decay = torch.tensor(decay_schedule('vir', 4), device='cuda')
    outputs, grads = {}, {}
    for kernel in ('fla', 'torch'):
        out = retention(q, k, v, log_decay, mode='chunkwise', direction=direction, kernel=kernel)
        out.float().pow(2).mean().backward()
        outputs[kernel], grads[kernel] = out.float(), [t.grad.float().clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
    scale = outputs['torch'].abs().max()
    assert (outputs['fla'] - outputs['torch']).abs().max() <= 0.02 * scale
    for a, b in zip(grads['fla'], grads['torch']):
        assert (a - b).abs().max() <= 0.05 * b.abs().max()


# ----------------------------------------------------------------------------------------------
# masks and positions (what AdaViT's dropped tokens need)

def _kept_subset(n=N, seed=1):
    """A random kept subset per batch element (the last token always kept), gathered in order and padded
    to the largest count by repeating the last kept index, as the adaptive inference gathers it."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(B, n, generator=g) < 0.55
    keep[:, -1] = True
    counts = keep.sum(1)
    width = int(counts.max())
    index = torch.stack([torch.cat([row.nonzero()[:, 0], row.nonzero()[-1:, 0].repeat(width - int(c))])
                         for row, c in zip(keep, counts)])
    valid = torch.arange(width)[None] < counts[:, None]
    return keep, index, valid


@pytest.mark.parametrize('direction', DIRECTIONS)
@pytest.mark.parametrize('mode,chunk_size', FORMS, ids=FORM_IDS)
def test_masked_keys_and_kept_positions_are_exact(mode, chunk_size, direction):
    """A dropped token contributes nothing, and two kept tokens decay by their ORIGINAL distance: zeroing
    the dropped keys, and gathering only the kept tokens with their positions, both give the brute-force
    result over the kept keys, in every form."""
    q, k, v = _qkv()
    gammas = DECAYS['fast']
    log_decay = torch.tensor([math.log(x) for x in gammas], dtype=torch.float64)
    keep, index, valid = _kept_subset()
    masked_k = k * keep[:, None, :, None]
    reference = _reference(q, masked_k, v, gammas, direction)
    kwargs = {} if chunk_size is None else dict(chunk_size=chunk_size)
    masked = retention(q, masked_k, v, log_decay, mode=mode, direction=direction, **kwargs)
    torch.testing.assert_close(masked, reference, rtol=0, atol=1e-10)

    def take(t):
        return t.gather(2, index[:, None, :, None].expand(-1, H, -1, t.shape[-1]))
    gathered = retention(take(q), take(k) * valid[:, None, :, None], take(v), log_decay, mode=mode,
                         direction=direction, positions=index, **kwargs)
    for b in range(B):
        kept = int(valid[b].sum())
        torch.testing.assert_close(gathered[b, :, :kept], reference[b][:, keep[b]], rtol=0, atol=1e-10)


def test_gathered_tokens_without_positions_are_not_the_same():
    """Guard: the positions matter (gathered tokens counted as adjacent decay differently)."""
    q, k, v = _qkv()
    log_decay = torch.tensor([math.log(x) for x in DECAYS['fast']], dtype=torch.float64)
    _, index, valid = _kept_subset()
    def take(t):
        return t.gather(2, index[:, None, :, None].expand(-1, H, -1, t.shape[-1]))
    args = (take(q), take(k) * valid[:, None, :, None], take(v), log_decay)
    assert (retention(*args, positions=index) - retention(*args)).abs().max() > 1e-2


def test_fla_kernel_takes_default_positions_only():
    q, k, v = _qkv(n=4)
    with pytest.raises(ValueError, match="default token positions"):
        retention(q, k, v, torch.zeros(H, dtype=torch.float64), mode='chunkwise', kernel='fla',
                  positions=torch.arange(4)[None])


# ----------------------------------------------------------------------------------------------
# the parallel form's cached decay matrix

@pytest.mark.parametrize('direction', DIRECTIONS)
def test_the_cached_decay_gives_the_same_bits_and_trains_after_inference(direction):
    """Retention takes the parallel form's decay from a cache shared by modules with the same decays: the
    outputs are bit-identical to building it, and a matrix first built under inference mode still works
    under autograd (the cache makes normal tensors)."""
    module = Retention(32, num_heads=4, mode='parallel', direction=direction).eval()
    x = torch.randn(2, 9, 32)
    with torch.inference_mode():
        cached = module(x)
    assert cached_parallel_decay(module.log_decay, 9, direction, x) is not None
    q, k, v = module.qkv(x).reshape(2, 9, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)  # module's layout
    built = retention_parallel(q, k, v, module._log_decay(q), direction, scale=module.scale)  # decay built here
    expected = module.proj(module.normalize_heads(built))
    assert torch.equal(cached, expected.detach())
    module.train()
    module(x).square().sum().backward()
    assert module.qkv.weight.grad is not None


def test_long_sequences_and_tracing_build_the_decay_instead():
    assert cached_parallel_decay((-0.1,) * 4, 2048, 'causal', torch.zeros(1)) is None  # 16M entries: not kept
    whole = cached_parallel_decay((-0.1, -0.2), 6, 'bidirectional', torch.zeros(1, dtype=torch.float64))
    assert whole.dtype == torch.float64 and whole.shape == (1, 2, 6, 6)
    assert whole[0, 1, 0, 5].item() == pytest.approx(math.exp(-0.2 * 5), rel=1e-15)


@pytest.mark.parametrize('direction', DIRECTIONS)
def test_auto_runs_parallel_up_to_its_token_limit_and_chunkwise_above(monkeypatch, direction):
    monkeypatch.setattr(retention_forms, 'AUTO_PARALLEL_MAX_TOKENS', N)
    assert retention_forms.resolve_mode('auto', N) == 'parallel'
    assert retention_forms.resolve_mode('auto', N + 1) == 'chunkwise'
    assert retention_forms.resolve_mode('recurrent', 10 ** 6) == 'recurrent'
    log_decay = torch.tensor(decay_schedule('vir', H), dtype=torch.float64)
    for n, form in [(N, 'parallel'), (N + 1, 'chunkwise')]:
        q, k, v = _qkv(n=n)
        expected = retention(q, k, v, log_decay, mode=form, direction=direction, chunk_size=7)
        assert torch.equal(retention(q, k, v, log_decay, mode='auto', direction=direction, chunk_size=7), expected)


@pytest.mark.parametrize('heads', [None, [0, 2], [1]], ids=['all', 'two', 'one'])
def test_head_norm_is_a_layer_norm_per_head_with_its_own_affine(heads):
    torch.manual_seed(0)
    module = Retention(dim=H * D, num_heads=H)
    with torch.no_grad():
        module.norm_weight.normal_()
        module.norm_bias.normal_()
    out = torch.randn(B, H if heads is None else len(heads), N, D, dtype=torch.float32)
    kept = list(range(H)) if heads is None else heads
    weight, bias = module.norm_weight.view(H, D)[kept], module.norm_bias.view(H, D)[kept]
    expected = torch.stack([torch.nn.functional.layer_norm(out[:, i], (D,)) * weight[i] + bias[i]
                            for i in range(len(kept))], dim=2)  # [B, N, h, d]
    built = module.normalize_heads(out, None if heads is None else torch.tensor(heads))
    torch.testing.assert_close(built, expected.reshape(B, N, -1), rtol=1e-6, atol=1e-6)
    plain = Retention(dim=H * D, num_heads=H, head_norm=False)
    assert torch.equal(plain.normalize_heads(out), out.transpose(1, 2).reshape(B, N, -1))
