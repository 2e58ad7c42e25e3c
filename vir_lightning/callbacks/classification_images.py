"""TensorBoard figure of a few validation images with predicted and true labels."""
import lightning as L

from .drawing import denormalize
from .panels import tensorboard_writer


class ClassificationImageLogger(L.Callback):
    """Every validation epoch, the first ``num_images`` images titled 'pred / true' (green right, red wrong)."""

    def __init__(self, num_images: int = 16):
        self.num_images = num_images

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        writer = tensorboard_writer(trainer)
        if batch_idx != 0 or writer is None or trainer.sanity_checking or not outputs:
            return
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        images, targets = batch[0][:self.num_images], batch[1][:self.num_images]
        preds = outputs['preds'][:self.num_images]
        datamodule = trainer.datamodule
        images = denormalize(images, datamodule.mean, datamodule.std).permute(0, 2, 3, 1).numpy()
        names = pl_module.class_names
        cols = min(8, len(images))
        rows = -(-len(images) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis('off')
        for ax, image, pred, target in zip(axes.flat, images, preds.tolist(), targets.tolist()):
            ax.imshow(image)
            ax.set_title(f'{names[pred]} / {names[target]}', fontsize=8, color='green' if pred == target else 'red')
        fig.suptitle('prediction / truth', fontsize=9)
        fig.tight_layout()
        writer.add_figure('val/predictions', fig, global_step=trainer.global_step)
        plt.close(fig)
