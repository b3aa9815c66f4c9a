"""Code generation: standalone PyTorch source, ``nn.Module`` and pictures of solved kernels."""
