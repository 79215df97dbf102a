"""Device-resident splits and prefetching (sweepcnn.data.device_data): the loaders' contents and order, the
memory rule, and on a GPU the CUDA paths."""
import pytest
import torch
from torch.utils.data import DataLoader

from sweepcnn.config import parse_args
from sweepcnn.data.datasets import load_data, make_loader
from sweepcnn.options import DATA_OPTIONS, DEVICE_DATA_OPTIONS
from sweepcnn.data.device_data import DeviceLoader, Prefetch, device_loader, fits

CFG = {**parse_args([], DATA_OPTIONS)[0], **parse_args([], DEVICE_DATA_OPTIONS)[0]}


@pytest.fixture(scope="module")
def digits():
    return load_data({**CFG, "data": "digits"}, 16, 1, progress=False)


def _rows(images):
    return {bytes(image.numpy().tobytes()) + bytes([int(label)]) for image, label in zip(*images)}


def _epoch(loader):
    batches = list(loader)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def test_the_share_of_free_memory_decides():
    assert fits(100, 0.33, 1000) and not fits(400, 0.33, 1000) and not fits(1, 0.0, 1000)


def test_a_split_on_the_device_yields_each_image_once_per_epoch_in_the_seeded_order(digits):
    split = digits.train
    generator = torch.Generator()
    loader = DeviceLoader(make_loader(split, 64, True, CFG, generator, False), torch.device("cpu"))
    assert len(loader) == -(-len(split) // 64)
    generator.manual_seed(3)
    first = _epoch(loader)
    generator.manual_seed(3)
    again = _epoch(loader)
    generator.manual_seed(4)
    other = _epoch(loader)
    assert torch.equal(first[0], again[0]) and not torch.equal(first[1], other[1])
    assert first[0].dtype == torch.uint8 and len(first[1]) == len(split)
    plain = _epoch(make_loader(split, 64, False, CFG, torch.Generator(), False))
    assert _rows(first) == _rows(plain)  # the same images with the same labels, shuffled


def test_balanced_sampling_and_evaluation_order_are_the_loaders(digits):
    cfg = {**CFG, "balanced_sampler": True}
    loader = DeviceLoader(make_loader(digits.train, 32, True, cfg, torch.Generator().manual_seed(0), False),
                          torch.device("cpu"))
    assert len(_epoch(loader)[1]) == len(digits.train)
    ordered = DeviceLoader(make_loader(digits.val, 32, False, CFG, torch.Generator(), False), torch.device("cpu"))
    assert torch.equal(_epoch(ordered)[1], torch.from_numpy(digits.val.labels))


def test_prefetch_yields_the_loaders_batches_in_order(digits):
    loader = make_loader(digits.val, 50, False, CFG, torch.Generator(), False)
    fetched = Prefetch(loader, torch.device("cpu"))
    assert len(fetched) == len(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fetched, loader, strict=True))


def test_on_cpu_the_plain_loader(digits):
    assert isinstance(device_loader(digits.train, 64, True, CFG, torch.Generator(), torch.device("cpu")), DataLoader)


@pytest.mark.cuda
def test_cuda_keeps_a_split_that_fits_on_the_gpu_and_prefetches_one_that_does_not(digits):
    cuda = torch.device("cuda")
    resident = device_loader(digits.train, 64, True, CFG, torch.Generator().manual_seed(0), cuda)
    streamed = device_loader(digits.train, 64, True, {**CFG, "data_on_device": 0}, torch.Generator(), cuda)
    assert isinstance(resident, DeviceLoader) and isinstance(streamed, Prefetch)
    assert resident.pixels.device.type == "cuda"
    for loader in (resident, streamed):
        images, labels = _epoch(loader)
        assert images.device.type == "cuda" and labels.device.type == "cuda"
        assert _rows((images.cpu(), labels.cpu())) == _rows(_epoch(make_loader(digits.train, 64, False, CFG,
                                                                               torch.Generator(), False)))
