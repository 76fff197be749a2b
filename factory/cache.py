"""On-disk cache of frozen-backbone features, so the backbone runs once per image, ever.

The key covers everything that decides a feature vector: the backbone's weights (hashed, so
a changed SavedModel or weights file misses), its input normalization, and the exact pixels of
every image in the split (so any added, removed or edited image misses). Its folder comes
from factory.specs.CacheSpec.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

CACHE_VERSION = "1"


def backbone_fingerprint(classifier) -> str:
    digest = hashlib.sha256(CACHE_VERSION.encode())
    digest.update(repr((classifier.backbone.name, classifier.backbone.normalization)).encode())
    for weight in classifier.feature_model.weights:
        digest.update(weight.name.encode())
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def key(fingerprint: str, images: np.ndarray) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(repr(images.shape).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


class FeatureCache:
    def __init__(self, classifier, folder: Path):
        self.classifier = classifier
        self.folder = Path(folder)
        self.fingerprint = backbone_fingerprint(classifier)
        self.hits = self.misses = 0

    def features(self, images: np.ndarray) -> np.ndarray:
        path = self.folder / f"{key(self.fingerprint, images)}.npy"
        if path.is_file():
            try:
                cached = np.load(path)
                if cached.shape[0] == len(images):
                    self.hits += 1
                    return cached
            except (OSError, ValueError):
                pass  # a damaged entry is recomputed and replaced
        self.misses += 1
        features = self.classifier.features(images)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, features)
        os.replace(tmp, path)  # readers never see a half-written entry
        return features
