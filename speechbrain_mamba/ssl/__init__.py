"""HuBERT-style self-supervised learning with Mamba encoders: the model
(:mod:`~speechbrain_mamba.lobes.ssl.hubert`, with its span masking), k-means
targets
(:mod:`~speechbrain_mamba.ssl.kmeans`, :mod:`~speechbrain_mamba.ssl.targets`),
the Brain classes and the recipe drivers
(:mod:`~speechbrain_mamba.ssl.recipe`).
"""
