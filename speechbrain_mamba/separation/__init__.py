"""Speech separation with Mamba models: data preparation, dynamic mixing,
the shared SpeechBrain training recipe, test-stage metrics, hub export and
the converter for the Mamba-TasNet authors' checkpoints. Speech enhancement,
separation with one source, is the ``enhancement`` subpackage."""
