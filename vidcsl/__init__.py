"""vidcsl: contrastive self-supervised learning of image and video encoders, studied through
adversarial robustness. The fused ops live in the sibling package ``kernels``."""

__version__ = "0.1.0"
