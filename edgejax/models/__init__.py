"""Models as init/apply pairs that vmap well over the node axis."""
from edgejax.models.base import DenseLayer, Model, num_bytes, num_parameters, weighted_correct, weighted_cross_entropy
from edgejax.models.zoo import MODELS, cnn, conv1d_net, get_model, logistic_regression, mlp

__all__ = ["DenseLayer", "Model", "MODELS", "cnn", "conv1d_net", "get_model", "logistic_regression", "mlp",
           "num_bytes", "num_parameters", "weighted_correct", "weighted_cross_entropy"]
