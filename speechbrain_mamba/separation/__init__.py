"""Speech separation with Mamba models: data preparation, dynamic mixing,
the shared SpeechBrain training recipe, test-stage metrics, hub export and
the converter for the Mamba-TasNet authors' checkpoints."""
