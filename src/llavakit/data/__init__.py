"""Data for training and evaluating llavakit models: the deterministic synthetic scene generator (`synth`)."""
