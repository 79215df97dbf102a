"""Part B: fine-tuning pretrained torchvision backbones (see its issue; not built yet)."""
