"""torch.hub entry points for the released MSeg models.

    model = torch.hub.load(".", "mseg_3m", source="local")          # from a clone's root; weights downloaded once
    model = torch.hub.load(".", "camvid_11_1m", source="local", device="cuda")
    model = torch.hub.load(".", "mseg_3m", source="local", pretrained=False)   # architecture only

Every model name of ``mseg zoo list`` is an entry point, with '-' written as '_'. The models are in eval mode
and take normalised RGB (see mseg_semantic.normalization); ``mseg_semantic.Segmenter(model, ...)`` runs the
original test-time algorithm on images.
"""

dependencies = ["torch", "numpy", "cv2", "yaml", "safetensors", "tqdm"]

from mseg_semantic import zoo as _zoo  # noqa: E402


def _entry_point(name: str):
    info = _zoo.get_model_info(name)

    def entry(pretrained: bool = True, device: str = "cpu", mirror: str | None = None):
        if pretrained:
            return _zoo.load_model(name, device=device, mirror=mirror)
        import json

        from mseg_semantic.models import build_model, read_metadata

        options = {"config": json.loads(read_metadata(_zoo.fetch(name))["config"])} if info.bundled else {}
        return build_model(info.arch, info.num_classes, **options).to(device).eval()

    entry.__name__ = name.replace("-", "_")
    arch = "compact HRNet" if info.bundled else "HRNetV2-W48"
    entry.__doc__ = (
        f"{info.title}: {arch}, {info.num_classes} classes ({info.taxonomy} taxonomy), trained at "
        f"{info.train_resolution}. pretrained=False returns the architecture with random weights."
    )
    return entry


for _name in _zoo.model_names():
    globals()[_name.replace("-", "_")] = _entry_point(_name)
