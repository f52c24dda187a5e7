"""A tied embedding filled from the checkpoint's redundant ``lm_head.weight`` when the embedding
itself is missing: as right as skipping the copy, if the values are right (transformers does
this); wrong values still fail."""


from weightcheck.conformance.properties import PROPERTIES
from weightcheck.conformance.assertions import PropertyFailure
from weightcheck.fixtures.case import Case, CheckpointRecipe
from weightcheck.arch import Arch, Placement
from weightcheck.reference_models.families import checkpoint_specs
from weightcheck.reference_models.reference_loader.loader import ReferenceLoader

from weightcheck.conformance.search import adapter

EMBED = "model.embed_tokens.weight"


def missing_tensor(loader, case, dropped):
    return PROPERTIES["missing_tensor"].run(loader, case, {"dropped": dropped}).note


class FillsFromAlias(ReferenceLoader):
    def __init__(self, scale=1.0):
        self.scale = scale

    def load(self, model, checkpoint):
        loaded = super().load(model, checkpoint)
        weights = dict(checkpoint.weights())
        if EMBED not in weights and "lm_head.weight" in weights:
            embed = dict(model.named_parameters())[EMBED]
            rows = weights["lm_head.weight"]
            embed.data.zero_()
            embed.data[: rows.shape[0]] = rows * self.scale
            loaded.add(EMBED)
        return loaded


def _case():
    arch = Arch("llama", 8, 1, 2, 1, 4, 4, 10, tie_word_embeddings=True)
    names = tuple(checkpoint_specs(arch))
    return Case(arch, Placement.single(arch), CheckpointRecipe(5, (names,)))


def test_filling_from_the_alias_copy_passes():
    assert missing_tensor(adapter(FillsFromAlias()), _case(), EMBED) == "filled from an alias copy"


def test_filling_wrong_values_from_the_alias_copy_fails():
    try:
        missing_tensor(adapter(FillsFromAlias(scale=2.0)), _case(), EMBED)
    except PropertyFailure as failure:
        assert "filled from ['lm_head.weight']" in str(failure)
    else:
        raise AssertionError("wrong values passed")


def test_skipping_the_alias_copy_still_passes():
    assert missing_tensor(adapter(ReferenceLoader()), _case(), EMBED) == "reported"
