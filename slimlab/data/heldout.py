"""A dataset's validation split served as the test split, so a search scores candidates without reading test images."""
from __future__ import annotations

from dataclasses import replace

from slimlab.data import DatasetRequest, ImageDataset, load_dataset, register_dataset
from slimlab.data.loader import split_validation
from slimlab.errors import ConfigError

# The seed slimlab.run carves every validation split with (run.DATA_SPLIT_SEED): the images scored here are exactly
# the validation images of a run of the wrapped dataset with the same val_size (a test checks it).
SPLIT_SEED = 0


@register_dataset("heldout", "The validation split of another dataset as its test split, the rest as its training split "
                  "(options: of, val_size, options); what `slimlab explore` scores candidates on", options=("of", "val_size", "options"))
def load_heldout(request: DatasetRequest) -> ImageDataset:
    """Load `of`, carve its validation split as a run would, and serve it as the test split; the test images stay unread."""
    inner, val_size = request.options.get("of"), request.options.get("val_size")
    if not inner or inner == "heldout":
        raise ConfigError("data.options.of: name the dataset whose validation split is held out, e.g. cifar10_jpeg")
    if not isinstance(val_size, int) or val_size <= 0:
        raise ConfigError(f"data.options.val_size: expected a positive number of validation images, got {val_size!r}")
    options = {"progress": request.options.get("progress", True), **(request.options.get("options") or {})}
    dataset = load_dataset(inner, replace(request, options=options))
    rest, validation = split_validation(dataset.train, val_size, seed=SPLIT_SEED)
    return replace(dataset, name=f"heldout:{dataset.name}", train=rest, test=validation,
                   source=f"the {val_size}-image validation split of {dataset.name} ({dataset.source}); its test split unread")
