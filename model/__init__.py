"""The speech backbones, the vLLM engine host and model artifacts. Knows nothing of sockets."""
