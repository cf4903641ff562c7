"""Video backbones from torchvision (R3D-18, R(2+1)D-18, MC3-18) and pytorchvideo (X3D-XS/S, Slow-R50).

All are randomly initialised (no hub weights can be fetched offline) and return globally pooled features:
the classification layer is removed and fixed-size pooling is replaced by adaptive pooling, so the nets
run on the small clips of CPU demos (e.g. 4 x 32 x 32) as well as their nominal inputs (X3D-XS: 4 x 160 x 160,
X3D-S: 13 x 160 x 160, Slow-R50: 8 x 224 x 224; torchvision: 16 x 112 x 112). Input is *normalised*
(B, 3, T, H, W); the registry adds the pixel normalisation.
"""

from __future__ import annotations

import warnings

from torch import nn

# name -> (clip length, crop size, depth factor) as in pytorchvideo's hub definitions
_X3D_VARIANTS = {"x3d_xs": (4, 160, 2.2), "x3d_s": (13, 160, 2.2)}


def build_torchvision_video(name: str) -> tuple[nn.Module, int]:
    """torchvision ``r3d_18`` / ``r2plus1d_18`` / ``mc3_18`` with fc removed: (module, 512)."""
    from torchvision.models import video

    builders = {"r3d_18": video.r3d_18, "r2plus1d_18": video.r2plus1d_18, "mc3_18": video.mc3_18}
    if name not in builders:
        raise ValueError(f"unknown torchvision video model {name!r}; valid: {sorted(builders)}")
    model = builders[name](weights=None)
    dim = model.fc.in_features
    model.fc = nn.Identity()  # its avgpool is already adaptive
    return model, dim


def _import_pytorchvideo_models():
    with warnings.catch_warnings():  # pytorchvideo triggers a torch.jit deprecation warning on import
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models import resnet, x3d
    return resnet, x3d


def _strip_head(head: nn.Module) -> None:
    """Turn a pytorchvideo ResNetBasicHead into global pooling: no dropout, projection or softmax."""
    head.dropout = None
    head.proj = None
    head.activation = None
    head.output_pool = nn.AdaptiveAvgPool3d(1)


def build_x3d(name: str) -> tuple[nn.Module, int]:
    """X3D-XS / X3D-S, head kept up to its 2048-d ``lin5`` features (conv5 -> pool -> lin5 -> ReLU)."""
    if name not in _X3D_VARIANTS:
        raise ValueError(f"unknown X3D variant {name!r}; valid: {sorted(_X3D_VARIANTS)}")
    clip, crop, depth = _X3D_VARIANTS[name]
    _, x3d = _import_pytorchvideo_models()
    model = x3d.create_x3d(input_clip_length=clip, input_crop_size=crop, depth_factor=depth, head_dim_out=2048)
    head = model.blocks[-1]
    head.pool.pool = nn.AdaptiveAvgPool3d(1)  # was AvgPool3d sized for the nominal input
    _strip_head(head)
    return model, head.pool.post_conv.out_channels


def build_slow_r50() -> tuple[nn.Module, int]:
    """Slow-R50 (pytorchvideo's ``slow_r50`` hub definition) with the head reduced to global pooling."""
    resnet, _ = _import_pytorchvideo_models()
    model = resnet.create_resnet(model_depth=50, stem_conv_kernel_size=(1, 7, 7), head_pool_kernel_size=(8, 7, 7))
    head = model.blocks[-1]
    head.pool = nn.AdaptiveAvgPool3d(1)
    _strip_head(head)
    return model, 2048
