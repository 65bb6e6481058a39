"""Model lobes (ready-made speech models) built from Mamba blocks."""
