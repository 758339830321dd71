"""Built-in real datasets: Fashion-MNIST, Fashion-MNIST captions, scikit-learn digits."""

from mmcompress.data.registry import list_datasets, load_dataset

__all__ = ["list_datasets", "load_dataset"]
