"""Model builders: the EfficientNet-B0 U-Net, the classifier on its encoder, model-level ensembles."""
