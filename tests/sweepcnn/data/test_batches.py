"""A training batch of one image (sweepcnn.data.batches): dropped at the end of an epoch by both loaders, and
--batch_size 1 refused while BatchNorm trains."""
import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler

from sweepcnn.config import parse_args
from sweepcnn.data.batches import NoSmallLastBatch, check_batch_size
from sweepcnn.data.datasets import ImageSet, make_loader
from sweepcnn.options import DATA_OPTIONS
from sweepcnn.data.device_data import DeviceLoader
from sweepcnn.errors import UserError

CFG = parse_args([], DATA_OPTIONS)[0]


def images(n: int) -> ImageSet:
    pixels = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)  # each image's one pixel is its index
    return ImageSet(pixels, np.arange(n), np.arange(n) % 2, [f"{i}.png" for i in range(n)])


@pytest.mark.parametrize("n, batch_size, smallest, sizes", [
    (9, 4, 2, [4, 4]),  # 9 = 2 * 4 + 1: the batch of one is dropped
    (10, 4, 2, [4, 4, 2]),  # a partial batch of two is kept
    (8, 4, 2, [4, 4]),
    (5, 1, 2, [1] * 5),  # --batch_size 1 (allowed without BatchNorm) keeps every batch
    (1, 4, 2, [1]),  # the only batch is kept
    (11, 4, 4, [4, 4]),  # 2 ranks normalising their own shards: a last batch of 3 leaves one rank 1 image
    (12, 4, 4, [4, 4, 4]),
    (3, 4, 4, [3]),
])
def test_only_a_final_batch_smaller_than_batchnorm_needs_is_dropped(n, batch_size, smallest, sizes):
    batches = NoSmallLastBatch(RandomSampler(range(n), generator=torch.Generator().manual_seed(0)), batch_size,
                               smallest)
    assert [len(b) for b in batches] == sizes and len(batches) == len(sizes)


@pytest.mark.parametrize("balanced", [False, True])
def test_both_training_loaders_drop_it_and_a_different_image_sits_out_each_epoch(balanced, capsys):
    cfg, generator = {**CFG, "balanced_sampler": balanced}, torch.Generator()
    loader = make_loader(images(9), 4, True, cfg, generator, pin_memory=False)
    err = capsys.readouterr().err
    assert err.startswith("note: 9 training images at --batch_size 4 leave a last batch of one image") and \
        err.count("\n") == 1
    on_device = DeviceLoader(loader, torch.device("cpu"))  # the device-resident path, here on the CPU
    for batches in (loader, on_device):
        assert len(batches) == 2
        seen = set()
        for epoch in range(8):
            generator.manual_seed(epoch)
            epoch_batches = [x.flatten().tolist() for x, _ in batches]
            assert [len(x) for x in epoch_batches] == [4, 4]
            seen |= {i for x in epoch_batches for i in x}
        assert len(seen) == 9 or balanced  # shuffled: no image sits out every epoch (with replacement: any may)


def test_evaluation_loaders_keep_every_image(capsys):
    loader = make_loader(images(9), 4, False, CFG, torch.Generator(), pin_memory=False)
    assert [len(y) for _, y in loader] == [4, 4, 1] and capsys.readouterr().err == ""


def test_batch_size_1_is_refused_only_while_batchnorm_trains():
    with pytest.raises(UserError, match=r"^--batch_size 1: this model trains BatchNorm layers.* or --fix$"):
        check_batch_size(1, True, "--fix")
    check_batch_size(1, False, "--fix")
    check_batch_size(2, True, "--fix")
