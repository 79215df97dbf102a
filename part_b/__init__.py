"""Part B: fine-tuning pretrained torchvision backbones (and EfficientNet-Lite0) under exact freezing strategies."""
