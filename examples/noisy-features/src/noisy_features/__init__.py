"""noisy_features: an example third-party cnnkit plugin (see README.md)."""
