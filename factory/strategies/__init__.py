"""Training strategies: name -> train(classifier, data, recipe, reporter) -> [Phase]."""
from factory.strategies import feature_extraction, fine_tuning

STRATEGIES = {
    "feature-extraction": feature_extraction.train,
    "fine-tune": fine_tuning.train,
}
