"""Speech enhancement as separation with one source: the VoiceBank-DEMAND
data preparation, a mini VoiceBank-DEMAND corpus builder, enhancement
metrics and the recipe driver (``SeparationBrain`` with one output). The
Transformer mask-network baseline is ``lobes.transformer_masknet``.
"""
