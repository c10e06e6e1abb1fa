"""Hashing datasets: sources that build train / query / database splits, and transforms.

- ``base``: ImageSplit (raw items), HashingData (the three splits), TransformedSplit.
- ``digits``: scikit-learn's bundled 8x8 digits (no download).
- ``cifar``: CIFAR-10 with named, seeded, cached split protocols.
- ``listfile``: list-file datasets (ImageNet100, NUS-WIDE, MS-COCO).
- ``features``: precomputed feature vectors from an .npz.
- ``transforms``: eval, no-augmentation and two-view train transforms.
"""
