"""Datasets of the bench: MNIST, Fashion-MNIST, CIFAR-10/100 (pickled or as JPEG ImageFolder), any ImageFolder
root (ImageNet style), a synthetic learnable stand-in for tests, and ``fashion_mnist_mini``, a small real
Fashion-MNIST subset shipped with the package (the offline default).

Every factory is keyword-only, ``f(*, split, root=None, download=False, augment=None, val_fraction=0.1,
split_seed=0, ...)``, and returns a :class:`~cnnkit.bench.data.splits.SplitDataset` of ``(tensor, int)``.
Splits follow the papers' 90/10 protocol: ``train`` = 90 % of the official training set, ``val`` = the
held-out 10 % (seeded, stratified, disjoint), ``test`` = the official test set, ``train_full`` = all of the
official training set. Factories are listed in :mod:`cnnkit.bench._dataset_specs`; data roots and caches
are resolved by :mod:`cnnkit.bench.data.paths`.
"""
