"""Training SelfLabelClusterer: settings, fitted state, the fit steps and their events."""
