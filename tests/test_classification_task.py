import lightning as L
import pytest
import torch

from conftest import TINY_VIR
from vir_lightning.datamodules import ImageFolderDataModule
from vir_lightning.errors import UserError
from vir_lightning.tasks import ClassificationTask


def make_task(**kwargs):
    defaults = dict(backbone='vir_tiny_patch16_224', backbone_kwargs=TINY_VIR, num_classes=3, lr=3e-3,
                    weight_decay=0.0, label_smoothing=0.0)
    return ClassificationTask(**{**defaults, **kwargs})


def make_trainer(tmp_path, **kwargs):
    defaults = dict(accelerator='cpu', devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return L.Trainer(**{**defaults, **kwargs})


def test_top1_top5_match_hand_computed_values():
    task = make_task(num_classes=7)
    logits = torch.tensor([
        [9., 8, 7, 6, 5, 4, 3],   # target 0: top-1 hit
        [9., 8, 7, 6, 5, 4, 3],   # target 4: top-5 hit only
        [9., 8, 7, 6, 5, 4, 3],   # target 6: miss
        [0., 0, 0, 9, 0, 0, 1],   # target 3: top-1 hit
    ])
    targets = torch.tensor([0, 4, 6, 3])
    result = task.val_metrics(logits, targets)
    assert result['val/acc1'].item() == pytest.approx(2 / 4)
    assert result['val/acc5'].item() == pytest.approx(3 / 4)


def test_training_loss_falls_and_model_learns(image_folder, tmp_path):
    L.seed_everything(0)
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=8, num_workers=0, image_size=32,
                               scale=(0.5, 1.0), color_jitter=0.0, random_erasing=0.0)
    task = make_task(num_classes=dm.num_classes, class_names=dm.class_names)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(outputs['loss'].item())

    trainer = make_trainer(tmp_path, max_epochs=8, callbacks=[Record()])
    trainer.fit(task, dm)
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert trainer.callback_metrics['val/acc1'] > 0.9


def test_checkpoint_reload_restores_linked_class_count(image_folder, tmp_path):
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=8, num_workers=0, image_size=32)
    task = make_task(num_classes=dm.num_classes, class_names=dm.class_names)
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=1)
    trainer.fit(task, dm)
    path = tmp_path / 'model.ckpt'
    trainer.save_checkpoint(path)
    restored = ClassificationTask.load_from_checkpoint(path)
    assert restored.num_classes == 3 and restored.class_names == ['blue', 'green', 'red']
    x = torch.randn(2, 3, 32, 32)
    task.eval(), restored.eval()
    torch.testing.assert_close(restored(x), task(x))


def test_class_count_mismatch_with_data_is_explained(image_folder, tmp_path):
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=8, num_workers=0, image_size=32)
    task = make_task(num_classes=10)
    with pytest.raises(UserError, match='predicts 10 classes .* has 3'):
        make_trainer(tmp_path).validate(task, dm)


def test_image_size_not_multiple_of_patch_is_explained(image_folder, tmp_path):
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=8, num_workers=0, image_size=30)
    with pytest.raises(UserError, match='image_size 30 .* patch size 8: use e.g. 32'):
        make_trainer(tmp_path).validate(make_task(), dm)


def test_unknown_backbone_lists_vir_models():
    with pytest.raises(UserError) as info:
        make_task(backbone='vir_huge_patch16_224')
    assert 'vir_tiny_patch16_224' in str(info.value) and 'vir_base_patch16_224' in str(info.value)


def test_mixup_cutmix_training_step_uses_soft_targets():
    task = make_task(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    task.log = lambda *args, **kwargs: None
    task.log_dict = lambda *args, **kwargs: None
    loss = task.training_step((images, targets), 0)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert task.backbone.head.weight.grad is not None  # 'linear': the backbone's own timm classifier


def test_layer_decay_and_warmup_schedule(image_folder, tmp_path):
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=8, num_workers=0, image_size=32)
    task = make_task(layer_decay=0.5, weight_decay=0.05, warmup_steps=3, lr=1e-2, min_lr=0.0)
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            lrs.append([g['lr'] for g in trainer.optimizers[0].param_groups])

    trainer = make_trainer(tmp_path, max_steps=9, limit_val_batches=0, callbacks=[Record()])
    trainer.fit(task, dm)
    groups = trainer.optimizers[0].param_groups
    scales = sorted({g.get('lr_scale', 1.0) for g in groups})
    # timm's (BEiT/MAE) layer decay: stem, block 0, block 1 with the final norm, the classifier (the
    # backbone's own timm head) -> 0.5^3, 0.5^2, 0.5, 1.0
    assert scales == pytest.approx([0.125, 0.25, 0.5, 1.0])
    head_lr = [max(step) for step in lrs]
    assert head_lr[0] < head_lr[2] < head_lr[3]  # warm-up rises ...
    assert head_lr[3] == pytest.approx(1e-2, rel=1e-6)  # ... to the peak ...
    assert head_lr[-1] < head_lr[4]  # ... then cosine decays
    no_decay = [g for g in groups if g['weight_decay'] == 0.0]
    assert any(p is task.backbone.pos_embed for g in no_decay for p in g['params'])


@pytest.mark.parametrize('max_epochs', [-1, 100])
def test_warmup_epochs_count_the_trainers_batches_when_max_steps_ends_the_run(image_folder, tmp_path, max_epochs):
    """26 images at batch 8 (last one dropped): 3 steps per epoch, whatever caps the run."""
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=8, num_workers=0, image_size=32)
    task = make_task(warmup_epochs=1, lr=1e-2, min_lr=0.0)
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]['lr'])

    trainer = make_trainer(tmp_path, max_steps=9, max_epochs=max_epochs, limit_val_batches=0, callbacks=[Record()])
    trainer.fit(task, dm)
    assert task.steps_per_epoch() == 3
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] == pytest.approx(1e-2, rel=1e-6)  # warm-up lasts one epoch
    assert lrs[4] < lrs[3]


def test_heads_linear_is_the_backbones_timm_classifier_and_mlp_adds_a_tanh_layer():
    linear = make_task()
    assert isinstance(linear.backbone.head, torch.nn.Linear) and linear.backbone.head.out_features == 3
    mlp = make_task(head='mlp', head_kwargs={'hidden_features': 16, 'dropout': 0.1})
    assert isinstance(mlp.head.act, torch.nn.Tanh) and mlp.head.fc1.out_features == 16
    assert mlp(torch.randn(2, 3, 32, 32)).shape == (2, 3) == linear(torch.randn(2, 3, 32, 32)).shape
    with pytest.raises(UserError, match='drop_rate'):
        make_task(head_kwargs={'dropout': 0.1})
    with pytest.raises(UserError, match='hidden_features and dropout'):
        make_task(head='mlp', head_kwargs={'width': 4})
