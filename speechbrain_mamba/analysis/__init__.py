"""Layer-wise analysis of speech models: mutual-information estimators
(:mod:`~speechbrain_mamba.analysis.estimators`), hidden-state capture with
forward hooks (:mod:`~speechbrain_mamba.utils.layer_capture`), model loading
(:mod:`~speechbrain_mamba.analysis.models`) and the MI-per-layer command
line (:mod:`~speechbrain_mamba.analysis.mutual_information`).
"""
