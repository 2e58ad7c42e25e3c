"""DataModules: each owns its data, splits and augmentation; all take root, batch_size, num_workers, image_size."""
from .base import VisionDataModule
from .image_folder import ImageFolderDataModule
from .mnist_demo import MNISTDemoDataModule

__all__ = ['VisionDataModule', 'ImageFolderDataModule', 'MNISTDemoDataModule']
