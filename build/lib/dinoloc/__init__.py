"""dinoloc: do DINO ViTs pretrained elsewhere predict protein localization in OpenCell images?"""

__version__ = "0.1.0"

from pathlib import Path

# The Hydra config tree ships inside the package, so an installed dinoloc composes from any directory.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
