"""dinoloc: do DINO ViTs pretrained elsewhere predict protein localization in OpenCell images?"""

__version__ = "0.1.0"

from pathlib import Path


def _config_dir() -> Path:
    """The Hydra config tree: configs/ at the repository root, shipped in a built package as dinoloc/configs
    (pyproject.toml maps one onto the other), so a checkout and an install compose the same files."""
    here = Path(__file__).resolve().parent
    installed = here / "configs"
    return installed if installed.is_dir() else here.parent.parent / "configs"


CONFIG_DIR = _config_dir()
