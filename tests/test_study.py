"""The ViR / QnA-ViT / ViT study runner: each run trains the backbone it names for its budget, and the report
says what the runs logged."""
import json

import yaml

from vir_lightning.tools import study


def test_study_trains_each_backbone_for_its_budget_and_reports_what_it_logged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(study.TASKS, 'seg', {**study.TASKS['seg'], 'budgets': {64: (10, 2)}})
    monkeypatch.setattr(study, 'WIDTH', dict(embed_dim=32, num_heads=2, depth=6, init_values=0.1))
    monkeypatch.setattr(study, 'QNA', dict(qna_depths=(1, 1, 1, 0), window_depths=(0, 0, 1, 1)))
    study.main(['--tasks', 'seg', '--output', str(tmp_path / 'out')])
    results = json.loads((tmp_path / 'out' / 'study.json').read_text())['results']
    assert [(r['backbone'], r['size'], r['status']) for r in results] == [
        ('ViR', 64, 'ok'), ('ViR-2D', 64, 'ok'), ('ViT', 64, 'ok'), ('QnA', 64, 'ok')]
    table = (tmp_path / 'out' / 'study.md').read_text()
    for r in results:
        run_dir = tmp_path / 'out' / 'runs' / f"seg_64_{r['backbone']}" / 'version_0'
        model = yaml.load((run_dir / "hparams.yaml").read_text(), Loader=yaml.UnsafeLoader)  # tuples inside
        # the run trained the model it is reported as: ViR and ViT of one width and depth, QnA-ViT-T as is
        assert model['backbone'] == study.BACKBONES[r['backbone']]
        if r['backbone'] != 'QnA':
            assert model['backbone_kwargs']['embed_dim'] == 32 and model['backbone_kwargs']['depth'] == 6
        assert (model['backbone_kwargs'].get('retention_mode') == 'auto') == r['backbone'].startswith('ViR')
        assert model['backbone_kwargs'].get('geometry') == {'ViR': '1d', 'ViR-2D': '2d'}.get(r['backbone'])
        scalars = study.read_scalars(run_dir)
        assert scalars['train/loss'][-1].step <= 10 < scalars['train/loss'][-1].step + 5  # the whole budget
        assert [s.step for s in scalars['val/mIoU']] == [9]  # validated once, at the end
        assert r['val/mIoU'] == scalars['val/mIoU'][-1].value  # the reported quality is the logged one
        assert 0 < r['train_images_per_s'] and r['peak_rss_mb'] > 100
        assert f"| seg | 64 | 10 x 2 | {r['backbone']} | mIoU {100 * r['val/mIoU']:.1f}% |" in table


def test_equal_time_mode_sizes_each_schedule_by_a_calibrated_step_time_and_stops_at_the_limit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(study.TIMED, 'seg', {**study.TIMED['seg'], 'size': 64})
    monkeypatch.setattr(study, 'CALIBRATION_STEPS', 4)
    monkeypatch.setattr(study, 'WIDTH', dict(embed_dim=32, num_heads=2, depth=4, init_values=0.1))
    study.main(['--tasks', 'seg', '--backbones', 'ViR', '--minutes', '0.1', '--output', str(tmp_path / 'out')])
    results = json.loads((tmp_path / 'out' / 'study.json').read_text())['results']
    assert [(r['backbone'], r['size'], r['mode'], r['status']) for r in results] == [('ViR', 64, 'equal time', 'ok')]
    table = (tmp_path / 'out' / 'study.md').read_text()
    for r in results:
        run_dir = tmp_path / 'out' / 'runs' / f"timed_seg_{r['backbone']}" / 'version_0'
        hparams = yaml.load((run_dir / 'hparams.yaml').read_text(), Loader=yaml.UnsafeLoader)
        config = yaml.safe_load((run_dir / 'config.yaml').read_text())
        assert config['trainer']['max_time'] == '00:00:00:06' and config['trainer']['max_steps'] == r['planned_steps']
        # the schedule's length is the steps the calibrated rate fits into the minutes
        assert r['planned_steps'] == max(1, int(r['calibration_images_per_s'] / r['batch_size'] * 6))
        assert hparams['backbone_kwargs']['img_size'] == 64
        assert 1 <= r['steps_done'] <= r['planned_steps'] and r['val/mIoU'] is not None
        assert f"| seg | 64 | 0.1 | {r['steps_done']} x {r['batch_size']} | {r['backbone']} | mIoU" in table
