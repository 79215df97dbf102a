"""Every flag of the shared package, in tables named for the module that reads them (the comment above each).

The tables live apart from the code that reads them so that a part's `--help`, and the checks of a config, import
neither torch nor wandb: `python part_a/train.py --help` prints at once. tests/sweepcnn/test_options.py checks that
each flag is read where its table says.
"""
from __future__ import annotations

from sweepcnn.artifacts import LOG_MODEL
from sweepcnn.config import Option, grouped
from sweepcnn.wandb_args import WATCH
from sweepcnn.wandb_auth import MODES

# read by sweepcnn/data/datasets.py
DATA_HELP = ("'digits' (built in, offline), 'inaturalist' (download), a folder with train/ and val/ (val is the "
             "test set), a folder with train/, val/ and test/, or a folder of class folders")
DATA_OPTIONS = grouped("data", {
    "data": Option("digits", "dataset: " + DATA_HELP),
    "val_fraction": Option(0.2, "share of train/ held out for validation (stratified) in a train/ + val/ layout; "
                                "digits and a folder of class folders are split 80/10/10", "float", min=0.05, max=0.5),
    "split_seed": Option(0, "seed of the train/validation(/test) split, fixed across runs and sweep trials", "int",
                         min=0),
    "max_images_per_class": Option(None, "use at most this many images per class and split folder (also of "
                                         "digits; quick runs)", "int", min=1, nullable=True),
    "balanced_sampler": Option(False, "sample training images with inverse class frequency", "bool"),
    "strict": Option(False, "fail on unreadable image files instead of skipping and reporting them (digits has "
                            "no files: nothing to skip)", "bool"),
    "cache_dir": Option(None, "decoded-image cache folder (default: $SWEEPCNN_CACHE or ~/.cache/sweepcnn)",
                        nullable=True),
    "num_workers": Option(0, "data-loader worker processes", "int", min=0),
})

# read by sweepcnn/data/device_data.py
DEVICE_DATA_OPTIONS = grouped("data", {
    "data_on_device": Option(0.33, "on CUDA: keep a split's uint8 pixels in GPU memory when they take at most this "
                                   "share of the free GPU memory (0: never)", "float", min=0, max=1),
})

# read by sweepcnn/data/augment.py
AUGMENTATIONS = ("hflip", "vflip", "rotate", "random_resized_crop", "color_jitter", "gaussian_blur", "sharpness",
                 "autoaugment", "randaugment", "trivialaugment")
AUGMENT_OPTIONS = {**grouped("augmentation", {
    "augmentation": Option(False, "random augmentation of training images", "bool"),
    "augmentations": Option(["hflip", "rotate", "random_resized_crop", "color_jitter"],
                            "augmentations used when --augmentation=true", "strs", choices=AUGMENTATIONS),
}), **DEVICE_DATA_OPTIONS}

# read by sweepcnn/train/optim.py
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "step", "exponential", "cosine", "onecycle", "cyclic", "plateau")
OPTIM_OPTIONS = grouped("optimiser and schedule", {
    "learning_rate": Option(1e-3, "peak learning rate", "float", min=1e-12, max=10),
    "optimizer": Option("adam", "optimiser", choices=OPTIMIZERS),
    "momentum": Option(0.9, "momentum for sgd and rmsprop", "float", min=0, max=0.999),
    "nesterov": Option(False, "Nesterov momentum (sgd)", "bool"),
    "weight_decay": Option(0.0, "weight decay (decoupled for adamw)", "float", min=0, max=1),
    "scheduler": Option("cosine", "learning-rate schedule; with more --epochs on --resume, cosine and onecycle are "
                                  "re-planned to the new end (a warm restart at 1/10 of the peak if they had ended), "
                                  "the others continue", choices=SCHEDULERS),
    "warmup_epochs": Option(0.0, "linear warm-up over this many epochs (onecycle: its rise when > 0) in front of "
                                 "every schedule but plateau, which ignores it", "float", min=0),
    "step_size": Option(5, "epochs between decays (step)", "int", min=1),
    "gamma": Option(0.1, "decay factor (step, exponential per epoch, plateau)", "float", min=1e-6, max=1),
    "plateau_patience": Option(2, "epochs without improvement before plateau decays the LR", "int", min=0),
})

# read by sweepcnn/train/ema.py
EMA_OPTIONS = grouped("mixup, CutMix, EMA and test-time augmentation", {
    "ema": Option(False, "keep an exponential moving average of the weights, validated every epoch beside them; the "
                         "better of the two is the epoch's val_acc and goes into best.pt (summary: best_weights)",
                  "bool"),
    "ema_decay": Option(0.999, "EMA decay per optimiser step (with --ema_warmup: its ceiling)", "float", min=0,
                        max=0.999999),
    "ema_warmup": Option(True, "warm the EMA decay up as timm's ModelEmaV3: update t uses "
                               "min(ema_decay, 1 - t^-3/4)", "bool"),
})

# read by sweepcnn/train/mixing.py
MIX_OPTIONS = grouped("mixup, CutMix, EMA and test-time augmentation", {
    "mixup": Option(0.0, "mixup alpha: blend each training image with another, in a Beta(alpha, alpha) ratio, and "
                         "their targets alike (0: off; timm's recipes use 0.1-0.8)", "float", min=0, max=10),
    "cutmix": Option(0.0, "CutMix alpha: paste a box of another training image, of a Beta(alpha, alpha) share of "
                          "the area, and mix the targets by that share (0: off; timm's recipes use 1.0)", "float",
                     min=0, max=10),
    "mix_prob": Option(1.0, "share of the training batches that --mixup/--cutmix mix", "float", min=0, max=1),
    "mix_switch_prob": Option(0.5, "with both --mixup and --cutmix on: share of the mixed batches that use CutMix",
                              "float", min=0, max=1),
})

# read by sweepcnn/train/tta.py
TTA_MODES = ("none", "flip", "flip_crops")
TTA_OPTIONS = grouped("mixup, CutMix, EMA and test-time augmentation", {
    "tta": Option("none", "test-time augmentation of validation, --test, the report and part_b/predict.py: none; "
                          "flip (mean logits of each image and its horizontal flip); flip_crops (also of its "
                          "central 7/8 zoomed back to full size, and that crop's flip)", choices=TTA_MODES),
})

# read by sweepcnn/train/engine.py
METRIC = "val_acc"  # what sweeps optimise; logged every epoch and put in the summary (best epoch's value)
ENGINE_OPTIONS = grouped("training", {
    "epochs": Option(10, "training epochs", "int", min=0),
    "batch_size": Option(64, "training batch size (evaluation uses twice this)", "int", min=1),
    "label_smoothing": Option(0.0, "label smoothing of the training loss", "float", min=0, max=0.5),
    "class_weights": Option("none", "cross-entropy class weights: none, or auto (inverse frequency)",
                            choices=("none", "auto")),
    "grad_clip": Option(None, "clip the gradient norm to this value", "float", min=1e-6, nullable=True),
    "patience": Option(None, "early stopping: epochs without improvement before stopping", "int", min=1,
                       nullable=True),
    "min_delta": Option(0.0, "early stopping: smallest change that counts as improvement", "float", min=0),
    "monitor": Option(METRIC, "metric that selects the best checkpoint and drives early stopping",
                      choices=("val_acc", "val_loss")),
    "amp": Option("auto", "mixed precision: auto (bf16 where native: CUDA compute capability 8.0+, CPUs with "
                          "AMX/AVX512-BF16; fp16 with loss scaling on older GPUs such as the T4; else off), bf16, "
                          "fp16 or off", choices=("auto", "bf16", "fp16", "off")),
    "channels_last": Option(True, "channels-last memory format (faster convolutions)", "bool"),
    "compile": Option(False, "torch.compile the model (pays off on CUDA; slower for this CNN on CPU, see "
                             "docs/performance.md)", "bool"),
    "seed": Option(0, "random seed (initialisation, shuffling, augmentation, dropout)", "int", min=0),
    "device": Option("auto", "auto, cpu, cuda, cuda:N or mps"),
}) | MIX_OPTIONS | EMA_OPTIONS | TTA_OPTIONS

# read by sweepcnn/train/lr_find.py
LR_FIND_OPTIONS = grouped("LR range test", {
    "lr_find": Option(False, "run an LR range test instead of training: writes lr_find.png (loss against learning "
                             "rate) and lr_find.csv, and suggests --learning_rate", "bool"),
    "lr_find_min": Option(1e-7, "LR range test: first learning rate", "float", min=1e-12, max=10),
    "lr_find_max": Option(10.0, "LR range test: last learning rate", "float", min=1e-12, max=100),
    "lr_find_steps": Option(100, "LR range test: batches (the training split is cycled if it is shorter)", "int",
                            min=10),
})

# read by sweepcnn/train/run_dir.py
RUN_FOLDER_OPTIONS = {
    "out_dir": Option("runs", "folder that holds one sub-folder per run"),
    "run_name": Option(None, "run folder name, a plain name (default: date-time plus a random suffix, or the W&B run "
                             "id under a sweep agent; an existing one is resumed then)", nullable=True),
    "resume": Option(False, "continue <out_dir>/<run_name> from its last completed epoch; only --epochs, --patience "
                            "and how to run (device, workers, W&B, ...) may change", "bool"),
}

# read by sweepcnn/train/startup.py
PROCESS_OPTIONS = {
    "deterministic": Option(False, "deterministic algorithms (bit-identical resume on CPU)", "bool"),
}

# read by sweepcnn/distributed.py
DISTRIBUTED_OPTIONS = {
    "sync_bn": Option(True, "under torchrun with several processes: synchronise BatchNorm statistics across them "
                            "(SyncBatchNorm), so that 2 processes x 32 images train as 1 x 64", "bool"),
}

# read by sweepcnn/train/runner.py
RUN_OPTIONS = grouped("run", {
    **RUN_FOLDER_OPTIONS,
    "test": Option(False, "after training, evaluate the best checkpoint on the test split", "bool"),
    **PROCESS_OPTIONS,
    **DISTRIBUTED_OPTIONS,
})

# read by sweepcnn/tracking.py
TRACKING_OPTIONS = grouped("tracking (W&B)", {
    "wandb_mode": Option(None, "W&B mode (default: $WANDB_MODE, else W&B's settings files, else online if W&B "
                               "credentials are configured, else offline)", choices=MODES, nullable=True),
    "wandb_project": Option(None, "W&B project (default: $WANDB_PROJECT, else sweepcnn; under `wandb agent`, the "
                                  "sweep's)", nullable=True),
    "wandb_entity": Option(None, "W&B entity, a user or team (default: $WANDB_ENTITY)", nullable=True),
    "wandb_log_model": Option(None, "model artifacts logged when the run ends (finished or stopped): false, best "
                                    "(best.pt, aliases best and latest) or all (also last.pt, alias last); default: "
                                    "$WANDB_LOG_MODEL as HF reads it (end: best, checkpoint: all, false), else false "
                                    "in a sweep trial and best otherwise", choices=LOG_MODEL, nullable=True),
    "wandb_tags": Option(None, "W&B run tags, comma-separated (default: $WANDB_TAGS); the part, model and strategy "
                               "are added", "strs", nullable=True),
    "wandb_notes": Option(None, "W&B run notes (default: $WANDB_NOTES)", nullable=True),
    "wandb_group": Option(None, "W&B run group (default: $WANDB_RUN_GROUP, else sweep-<id> under `wandb agent`)",
                          nullable=True),
    "wandb_watch": Option("false", "wandb.watch the model: log gradients, parameters or all (histograms, every 100 "
                                   "batches)", choices=WATCH),
})

# read by sweepcnn/report/run_report.py
REPORT_OPTIONS = grouped("run", {
    "report": Option(True, "with --test: write report/ (figures, tables, report.html) and log it to W&B", "bool"),
    "report_table_rows": Option(None, "with --report: at most this many test images in the W&B table of every test "
                                      "prediction (default: all)", "int", min=1, nullable=True),
})
