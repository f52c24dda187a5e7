"""A loader with one bug, for end-to-end tests of the plugin and the nightly template: it is
the reference loader except that ``transformer.ln_f.bias`` (gpt2, last pipeline rank) is zeroed
after loading.  Tests copy this file into their scratch directory and name it with --loader."""

import torch

from weightcheck.reference_models.reference_loader import loader as ref

CORRUPTED = "transformer.ln_f.bias"


class Zeroing:
    name = "zeroes transformer.ln_f.bias"

    def build(self, arch, placement):
        return ref.build(arch, placement)

    def load(self, model, checkpoint):
        loaded = ref.load(model, checkpoint)
        params = dict(model.named_parameters())
        if CORRUPTED in params:
            with torch.no_grad():
                params[CORRUPTED].zero_()
        return loaded


loader = Zeroing()
