"""Speech enhancement: the VoiceBank-DEMAND data preparation, a mini
VoiceBank-DEMAND corpus builder, enhancement metrics, the recipe driver
(separation with one source) and a Transformer mask-network baseline.
"""
