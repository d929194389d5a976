"""Models as init/apply pairs that vmap well over the node axis."""
from edgejax.models.base import (CROSS_ENTROPY, SQUARED_ERROR, DenseLayer, Loss, Model, num_bytes, num_parameters,
                                 weighted_correct, weighted_cross_entropy, weighted_squared_error)
from edgejax.models.flax_interop import from_flax
from edgejax.models.quantization import fake_quantize, quantization_aware, quantized_bytes
from edgejax.models.recurrent import char_lstm, leaf_char_lstm, lstm, lstm_init
from edgejax.models.zoo import MODELS, cnn, conv1d_net, get_model, linear_regression, logistic_regression, mlp

__all__ = ["CROSS_ENTROPY", "DenseLayer", "Loss", "MODELS", "Model", "SQUARED_ERROR", "char_lstm", "cnn", "conv1d_net", "fake_quantize", "from_flax", "get_model",
           "leaf_char_lstm", "linear_regression", "logistic_regression", "lstm", "lstm_init", "mlp", "num_bytes", "num_parameters", "quantization_aware", "quantized_bytes", "weighted_correct",
           "weighted_cross_entropy", "weighted_squared_error"]
