"""llavakit: the LLaVA family in PyTorch."""
