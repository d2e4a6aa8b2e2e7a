"""The clearing center (清算中心): inter-pool obligations, netting at cut-off, settlement."""
