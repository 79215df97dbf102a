"""The training loop typical of peer assignment repos, as the baseline of bench/run.py: torchvision ImageFolder-style
PIL decoding and resizing of every image in every epoch, fp32, NCHW, glibc's default allocator, the same CNN, batch
size and optimiser as ours. Prints one JSON line with each epoch's wall time.

    python bench/naive.py --root DATA_ROOT --files split.json --epochs 2 --input_size 224 --batch_size 64
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from part_a.model import build_cnn


class Files(Dataset):
    def __init__(self, paths: list[Path], labels: list[int], size: int):
        self.paths, self.labels = paths, labels
        self.transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--files", required=True, help="a run's split.json: its train files are used")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    split = json.loads(Path(args.files).read_text())
    classes = split["classes"]
    paths = [Path(args.root) / name for name, _ in split["train"]]
    labels = [classes.index(label) for _, label in split["train"]]
    torch.manual_seed(0)
    loader = DataLoader(Files(paths, labels, args.input_size), batch_size=args.batch_size, shuffle=True)
    model = build_cnn({"input_size": args.input_size, "num_classes": len(classes)})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    seconds = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        for images, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), targets).backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"epoch_seconds": seconds, "images": len(paths)}))


if __name__ == "__main__":
    main()
