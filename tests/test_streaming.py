"""Streaming inference of causal ViR (``vir_lightning/models/streaming.py``): the same features and logits as the
whole-image forward, memory set by the band and not by the image, and one clear message for what cannot stream."""
import csv
import math

import pytest
import timm
import torch

import vir_lightning  # noqa: F401  (registers the models)
from vir_lightning.models.retention import causal_retention_step, retention
from vir_lightning.models.streaming import RetentionStream, stream_logits
from test_cli import TINY_DEMO, run_main
from test_bad_input import one_line_error
from conftest import LargestTensor


def _model(**kwargs):
    torch.manual_seed(0)
    model = timm.create_model('vir_tiny_patch16_224', **{
        'direction': 'causal', 'num_classes': 7, 'init_values': 1.0, 'depth': 3, 'chunk_size': 16, **kwargs}).eval()
    with torch.no_grad():
        model.head.weight.normal_()  # logits of a size the comparison can see
    return model


@pytest.mark.parametrize('segments', [[5], [1, 4], [2, 2, 1], [3, 0, 2]])
def test_retention_step_by_segments_is_the_whole_sequence(segments):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, sum(segments), 4, generator=g, dtype=torch.float64) for _ in range(3))
    log_decay = torch.tensor([math.log(x) for x in (0.5, 0.8, 0.97)], dtype=torch.float64)
    whole = retention(q, k, v, log_decay, mode='parallel', direction='causal')
    state, outs, start = None, [], 0
    for n in segments:
        part = slice(start, start + n)
        out, state = causal_retention_step(q[:, :, part], k[:, :, part], v[:, :, part], log_decay, state,
                                           mode='chunkwise', chunk_size=2)
        outs.append(out)
        start += n
    assert torch.allclose(torch.cat(outs, 2), whole, atol=1e-12, rtol=0)


@pytest.mark.parametrize('pool', ['token', 'avg'])
@pytest.mark.parametrize('rows', [1, 3, 20])
def test_streamed_logits_equal_the_whole_image_forward(pool, rows):
    model = _model(global_pool=pool)
    images = torch.randn(2, 3, 320, 176)  # a 20 x 11 grid: position embeddings resampled from 14 x 14
    with torch.no_grad():
        whole = model(images)
    streamed = stream_logits(model, images, rows)
    assert (streamed - whole).abs().max() < 1e-4 * whole.abs().max()


@pytest.mark.parametrize('pos_embed', ['learn', 'none'])
def test_streamed_features_and_intermediates_equal_the_whole_image_ones(pos_embed):
    model = _model(pos_embed=pos_embed, depth=4)
    images = torch.randn(1, 3, 256, 96)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(images, indices=[1, 3])
    stream = RetentionStream(model, (256, 96), indices=[1, 3])
    bands, kept = [], []
    for start, height in ((0, 16), (16, 64), (80, 176)):  # bands of 1, 4 and 11 patch rows
        bands.append(stream.push(images[..., start:start + height, :]))
        kept.append(stream.intermediates)
    features = torch.cat(bands, 2)
    expected = final[:, :-1].reshape(1, 16, 6, -1).permute(0, 3, 1, 2)
    assert (features - expected).abs().max() < 1e-4 * expected.abs().max()
    for i, block in enumerate([1, 3]):
        streamed = torch.cat([k[i] for k in kept], 2)
        assert (streamed - intermediates[i]).abs().max() < 1e-4 * intermediates[i].abs().max(), block
    assert stream.finish().shape == (1, 7)



def test_memory_is_set_by_the_band_not_by_the_image_height():
    model = _model(depth=2)
    largest = {}
    for rows in (4, 32):  # patch rows of the image; bands of 2 rows
        stream = RetentionStream(model, (16 * rows, 64))
        with LargestTensor() as probe:
            for _ in range(rows // 2):
                stream.push(torch.randn(1, 3, 32, 64))
            stream.finish()
        largest[rows] = probe.largest
    assert largest[32] == largest[4]


@pytest.mark.parametrize('kwargs,needle', [
    (dict(direction='bidirectional'), 'read the rows below'),
    (dict(geometry='2d'), 'causal 1D'),
])
def test_what_cannot_stream_says_why(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        RetentionStream(_model(**kwargs), (64, 64))
    with pytest.raises(ValueError, match='vir_'):
        RetentionStream(timm.create_model('vit_tiny_patch16_224'), (64, 64))


def test_bands_must_be_whole_patch_rows_of_the_declared_image():
    model = _model()
    with pytest.raises(ValueError, match='multiple of the patch size'):
        RetentionStream(model, (100, 64))
    stream = RetentionStream(model, (64, 64))
    with pytest.raises(ValueError, match='whole patch rows'):
        stream.push(torch.randn(1, 3, 24, 64))
    with pytest.raises(ValueError, match='whole patch rows'):
        stream.push(torch.randn(1, 3, 16, 48))
    stream.push(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match='push the rest'):
        stream.finish()
    with pytest.raises(ValueError, match="more than the image's 4"):
        stream.push(torch.randn(1, 3, 32, 64))
    with pytest.raises(ValueError, match='positive number of patch rows'):
        stream_logits(model, torch.randn(1, 3, 64, 64), 0)


def test_predict_with_streaming_rows_gives_the_whole_image_predictions(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    causal = [*TINY_DEMO, '--model.backbone_kwargs.direction=causal']
    assert run_main(['fit', '--config', 'cls_demo.yaml', *causal], capsys)[0] == 0
    last = next((tmp_path / 'runs').rglob('last.ckpt'))
    for extra in ([], ['--model.streaming_rows=2']):
        code, _, err = run_main(['predict', '--config', 'cls_demo.yaml', *causal, '--ckpt_path', str(last), *extra],
                                capsys)
        assert code == 0, err
    whole, streamed = (list(csv.DictReader(open(tmp_path / 'outputs' / 'cls_demo' / name)))
                       for name in ('predictions.csv', 'predictions-1.csv'))
    assert len(whole) == len(streamed) > 2
    code, _, err = run_main(['predict', '--config', 'cls_demo.yaml', *causal, '--ckpt_path', str(last),
                             '--model.streaming_rows=0'], capsys)
    one_line_error(code, err, '--model.streaming_rows')  # the option reaches the model under --ckpt_path
    for a, b in zip(whole, streamed):
        assert (a['image'], a['class']) == (b['image'], b['class'])
        assert abs(float(a['score']) - float(b['score'])) <= 1e-4


@pytest.mark.parametrize('option,needle', [
    ('--model.streaming_rows=0', 'positive number of patch rows'),
    ('--model.backbone_kwargs.direction=bidirectional', 'needs causal 1D retention'),
])
def test_streaming_options_that_cannot_work_are_one_line_errors(tmp_path, monkeypatch, capsys, option, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['predict', '--config', 'cls_demo.yaml', *TINY_DEMO, '--model.streaming_rows=2',
                             '--model.backbone_kwargs.direction=causal', option], capsys)
    one_line_error(code, err, '--model.streaming_rows', needle)
