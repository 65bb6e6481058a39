"""Self-supervised models: the HuBERT-style masked-prediction model with a
Mamba, ConMamba or Transformer encoder (:mod:`.hubert`) and its span
masking (:mod:`.masking`)."""
