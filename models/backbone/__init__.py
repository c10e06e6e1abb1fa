"""Backbones: images (B, C, H, W) in [0, 1] -> features (B, features_size); see ``base.py``.

Built with ``hydra.utils.instantiate(cfg.backbone)`` from ``configs/backbone/*.yaml``:
``torchvision_models`` (vgg16, resnet50, vit_b16), ``efficientnet_lite`` (efficientnet_lite0/1/2),
``simple`` (identity, tiny). ``pretrained`` loads weights and raises UserError when they are unavailable.
"""
