"""LibriSpeech ASR recipes support: data preparation, Brain classes, the
recipe driver and the hub export."""
