"""Training strategies, by the name used on the command line (`--strategy`).

Each module has `train(classifier, data, spec, reporter, session, store) -> [Phase]`. A new
strategy is one module plus one line here (modules are imported when used, so the names can be
checked before TensorFlow starts).
"""
import importlib

MODULES = {
    "feature-extraction": "feature_extraction",
    "fine-tune": "fine_tuning",
}
NAMES = tuple(MODULES)


def get(name: str):
    return importlib.import_module(f"factory.strategies.{MODULES[name]}").train
