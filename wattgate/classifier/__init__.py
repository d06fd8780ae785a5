"""Request -> input tokens and output-class probabilities; the trained model artefact and its training."""
