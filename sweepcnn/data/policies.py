"""AutoAugment (ImageNet policy), RandAugment and TrivialAugmentWide, batched: every sample draws its own ops and
magnitudes (torchvision's tables and sampling rules), the geometric ops join the batch's one affine resampling and
the others run once per op on the samples that drew it (see sweepcnn.data.color)."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from sweepcnn.data import warp
from sweepcnn.data.color import ColourStep, RowStep

# torchvision's own tables (op -> (magnitudes(num_bins, height, width) or None, signed)), so names, ranges and
# sub-policies stay exactly those of v2.AutoAugment / RandAugment / TrivialAugmentWide.
SPACES = {"autoaugment": v2.AutoAugment._AUGMENTATION_SPACE, "randaugment": v2.RandAugment._AUGMENTATION_SPACE,
          "trivialaugment": v2.TrivialAugmentWide._AUGMENTATION_SPACE}
BINS = {"autoaugment": 10, "randaugment": 31, "trivialaugment": 31}
RANDAUGMENT_OPS, RANDAUGMENT_MAGNITUDE = 2, 9  # v2.RandAugment's defaults
LEVELS = {"Posterize": "posterize", "Solarize": "solarize", "AutoContrast": "autocontrast", "Equalize": "equalize"}


class Policy:
    """One of the three policies as an augmentation stage: `(n, height, width, generator) -> (matrices, steps)`."""

    def __init__(self, kind: str):
        self.kind = kind
        self.ops = list(SPACES[kind])
        self.signed = torch.tensor([SPACES[kind][op][1] for op in self.ops])
        self.subpolicies = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)._policies if kind == "autoaugment" else None

    def magnitudes(self, height: int, width: int) -> torch.Tensor:
        """[ops, bins] magnitude table (0 for ops without one)."""
        bins = BINS[self.kind]
        rows = [SPACES[self.kind][op][0](bins, height, width) for op in self.ops]
        return torch.stack([torch.zeros(bins) if r is None else r.to(torch.float32) for r in rows]).double()

    def draw(self, n: int, height: int, width: int, generator: torch.Generator
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per op slot: (op index [n], signed magnitude [n]); op -1 where a slot does not apply."""
        table = self.magnitudes(height, width)
        slots = []
        if self.kind == "autoaugment":
            index = {op: i for i, op in enumerate(self.ops)}
            chosen = torch.randint(len(self.subpolicies), (n,), generator=generator)
            for slot in range(2):
                spec = [self.subpolicies[int(c)][slot] for c in chosen]
                op = torch.tensor([index[name] for name, _, _ in spec])
                bins = torch.tensor([0 if m is None else m for _, _, m in spec])
                applied = torch.rand(n, generator=generator) <= torch.tensor([p for _, p, _ in spec])
                slots.append((torch.where(applied, op, -1), table[op, bins]))
        else:
            for _ in range(RANDAUGMENT_OPS if self.kind == "randaugment" else 1):
                op = torch.randint(len(self.ops), (n,), generator=generator)
                if self.kind == "randaugment":
                    bins = torch.full((n,), RANDAUGMENT_MAGNITUDE)
                else:
                    bins = torch.randint(BINS[self.kind], (n,), generator=generator)
                slots.append((op, table[op, bins]))
        signs = [torch.rand(n, generator=generator) <= 0.5 for _ in slots]
        return [(op, torch.where(flip & self.signed[op.clamp(min=0)], -m, m)) for (op, m), flip in zip(slots, signs)]

    def __call__(self, n: int, height: int, width: int, generator: torch.Generator) -> tuple[torch.Tensor, list]:
        matrices, steps = warp.identity(n), []
        for op, magnitude in self.draw(n, height, width, generator):
            m, s = self.slot(op, magnitude, height, width)
            matrices, steps = matrices @ m, steps + s
        return matrices, steps

    def slot(self, op: torch.Tensor, magnitude: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, list]:
        """One op per sample -> its part of the affine matrix and the pixel steps."""
        def of(name: str) -> torch.Tensor:
            return magnitude * (op == self.ops.index(name)) if name in self.ops else torch.zeros_like(magnitude)

        def rows(name: str) -> torch.Tensor:
            none = torch.zeros(0, dtype=torch.long)
            return torch.nonzero(op == self.ops.index(name)).flatten() if name in self.ops else none

        matrices = (warp.shear(of("ShearX"), 0, height, width) @ warp.shear(of("ShearY"), 1, height, width)
                    @ warp.translation(of("TranslateX").trunc(), of("TranslateY").trunc())
                    @ warp.rotation(of("Rotate")))
        invert = rows("Invert")
        steps = [ColourStep(1 + of("Brightness"), 1 + of("Contrast"), 1 + of("Color"), torch.zeros_like(magnitude),
                            torch.zeros_like(op, dtype=torch.bool).index_fill_(0, invert, True)),
                 RowStep("sharpen", rows("Sharpness"), 1 + magnitude[rows("Sharpness")])]
        for name, kind in LEVELS.items():
            r = rows(name)
            values = magnitude[r].long() if kind == "posterize" else 255 * magnitude[r]
            steps.append(RowStep(kind, r, values))
        return matrices, steps
